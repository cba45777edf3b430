/**
 * The PostgreSQL v3 wire protocol as the gateway needs it: the codes of the first packet a client sends, builders of
 * the messages the gateway writes itself (errors, authentication, parameter status, synthetic completions), readers
 * of the few fields it rewrites, and {@link FrameScanner}, which cuts a byte stream into messages without copying:
 * the messages a caller is interested in arrive whole, everything else is handed on as slices of the input.
 */

/** Protocol version 3.0, as the startup packet carries it. */
export const PROTOCOL_3_0 = 3 << 16;
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
/** The first byte of a TLS handshake record: a client using direct TLS (libpq `sslnegotiation=direct`). */
export const TLS_HANDSHAKE_BYTE = 0x16;
/** A startup packet larger than this is refused (Postgres' own limit is 10000 bytes). */
export const MAX_STARTUP_PACKET_BYTES = 10_000;

/** Message type bytes (frontend F, backend B). */
export const MessageType = {
  // Frontend
  query: 0x51, // 'Q'
  parse: 0x50, // 'P'
  bind: 0x42, // 'B'
  describe: 0x44, // 'D' (frontend); DataRow backend
  execute: 0x45, // 'E' (frontend); ErrorResponse backend
  sync: 0x53, // 'S' (frontend); ParameterStatus backend
  flush: 0x48, // 'H'
  close: 0x43, // 'C' (frontend); CommandComplete backend
  functionCall: 0x46, // 'F'
  terminate: 0x58, // 'X'
  copyData: 0x64, // 'd'
  copyDone: 0x63, // 'c'
  copyFail: 0x66, // 'f'
  password: 0x70, // 'p': PasswordMessage, SASLInitialResponse, SASLResponse
  // Backend
  authentication: 0x52, // 'R'
  parameterStatus: 0x53, // 'S'
  backendKeyData: 0x4b, // 'K'
  readyForQuery: 0x5a, // 'Z'
  errorResponse: 0x45, // 'E'
  noticeResponse: 0x4e, // 'N'
  parseComplete: 0x31, // '1'
  bindComplete: 0x32, // '2'
  closeComplete: 0x33, // '3'
  noData: 0x6e, // 'n'
  parameterDescription: 0x74, // 't'
  rowDescription: 0x54, // 'T'
  dataRow: 0x44, // 'D'
  commandComplete: 0x43, // 'C'
  emptyQueryResponse: 0x49, // 'I'
  portalSuspended: 0x73, // 's'
  copyInResponse: 0x47, // 'G'
  copyOutResponse: 0x48, // 'H'
  copyBothResponse: 0x57, // 'W'
  negotiateProtocolVersion: 0x76, // 'v'
  notification: 0x41, // 'A'
} as const;

/** Authentication request codes ('R' messages). */
export const AuthCode = { ok: 0, cleartextPassword: 3, md5Password: 5, sasl: 10, saslContinue: 11, saslFinal: 12 } as const;

/** A protocol violation by the peer: the connection is answered with an error and closed. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
  constructor(
    message: string,
    /** The SQLSTATE to answer with (08P01 protocol_violation unless said otherwise). */
    readonly code = '08P01',
    readonly detail?: string,
  ) {
    super(message);
  }
}

// ---- The first packet ----

/** What a client's first packet asks for. */
export type FirstPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; processId: number; secretKey: Buffer }
  | { kind: 'startup'; protocol: number; parameters: Map<string, string> };

/** The length of the first packet when `header` holds its first four bytes (a length that includes itself). */
export function firstPacketLength(header: Buffer): number {
  const length = header.readInt32BE(0);
  if (length < 8 || length > MAX_STARTUP_PACKET_BYTES) {
    throw new ProtocolError(`invalid startup packet length ${length}: a startup packet is 8 to ${MAX_STARTUP_PACKET_BYTES} bytes`);
  }
  return length;
}

/** Decodes a whole first packet (length included). */
export function parseFirstPacket(packet: Buffer): FirstPacket {
  const code = packet.readInt32BE(4);
  if (code === SSL_REQUEST_CODE && packet.length === 8) return { kind: 'ssl' };
  if (code === GSSENC_REQUEST_CODE && packet.length === 8) return { kind: 'gssenc' };
  if (code === CANCEL_REQUEST_CODE) {
    // 3.0 has a 4-byte key; 3.2 allows up to 256 bytes.
    if (packet.length < 16 || packet.length > 12 + 256) throw new ProtocolError('invalid cancel request: its length does not fit a process id and a key');
    return { kind: 'cancel', processId: packet.readInt32BE(8), secretKey: Buffer.from(packet.subarray(12)) };
  }
  if (code >> 16 !== 3) {
    throw new ProtocolError(`unsupported frontend protocol ${code >> 16}.${code & 0xffff}: this server supports 3.0 (use a PostgreSQL client, libpq 7.4 or newer)`, '0A000');
  }
  const parameters = new Map<string, string>();
  let offset = 8;
  for (;;) {
    if (offset >= packet.length) throw new ProtocolError('invalid startup packet: the parameter list does not end with an empty name');
    const name = readCString(packet, offset);
    offset = name.next;
    if (name.value === '') break;
    if (offset >= packet.length) throw new ProtocolError(`invalid startup packet: parameter "${name.value.slice(0, 64)}" has no value`);
    const value = readCString(packet, offset);
    offset = value.next;
    parameters.set(name.value, value.value);
  }
  if (offset !== packet.length) throw new ProtocolError('invalid startup packet: bytes after the parameter list');
  return { kind: 'startup', protocol: code, parameters };
}

/** A NUL-terminated UTF-8 string at `offset`, and where the next field starts. */
export function readCString(buffer: Buffer, offset: number): { value: string; next: number } {
  const end = buffer.indexOf(0, offset);
  if (end < 0) throw new ProtocolError('invalid message: a string is not terminated');
  return { value: buffer.toString('utf8', offset, end), next: end + 1 };
}

// ---- Builders ----

/** A message of `type` with `body` (the length is filled in). */
export function message(type: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function cstring(value: string): Buffer {
  return Buffer.from(`${value}\0`, 'utf8');
}

function int32(value: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeInt32BE(value, 0);
  return out;
}

/** An ErrorResponse (or NoticeResponse with `notice`): severity, SQLSTATE, message, and optionally detail and hint. */
export function errorResponse(fields: { severity?: 'ERROR' | 'FATAL'; code: string; message: string; detail?: string; hint?: string }, notice = false): Buffer {
  const severity = fields.severity ?? 'FATAL';
  const parts = [Buffer.from('S'), cstring(severity), Buffer.from('V'), cstring(severity), Buffer.from('C'), cstring(fields.code), Buffer.from('M'), cstring(fields.message)];
  if (fields.detail) parts.push(Buffer.from('D'), cstring(fields.detail));
  if (fields.hint) parts.push(Buffer.from('H'), cstring(fields.hint));
  parts.push(Buffer.from([0]));
  return message(notice ? MessageType.noticeResponse : MessageType.errorResponse, Buffer.concat(parts));
}

/** The fields of an ErrorResponse or NoticeResponse, by their one-letter codes. */
export function parseErrorFields(msg: Buffer): Map<string, string> {
  const fields = new Map<string, string>();
  let offset = 5;
  while (offset < msg.length && msg[offset] !== 0) {
    const code = String.fromCharCode(msg[offset]);
    const value = readCString(msg, offset + 1);
    fields.set(code, value.value);
    offset = value.next;
  }
  return fields;
}

export function authenticationOk(): Buffer {
  return message(MessageType.authentication, int32(AuthCode.ok));
}

/** AuthenticationSASL offering SCRAM-SHA-256 only (no channel binding: the TLS terminates here, not at Postgres). */
export function authenticationSasl(): Buffer {
  return message(MessageType.authentication, Buffer.concat([int32(AuthCode.sasl), cstring('SCRAM-SHA-256'), Buffer.from([0])]));
}

export function authenticationSaslContinue(data: string): Buffer {
  return message(MessageType.authentication, Buffer.concat([int32(AuthCode.saslContinue), Buffer.from(data, 'utf8')]));
}

export function authenticationSaslFinal(data: string): Buffer {
  return message(MessageType.authentication, Buffer.concat([int32(AuthCode.saslFinal), Buffer.from(data, 'utf8')]));
}

export function parameterStatus(name: string, value: string): Buffer {
  return message(MessageType.parameterStatus, Buffer.concat([cstring(name), cstring(value)]));
}

export function backendKeyData(processId: number, secretKey: number): Buffer {
  return message(MessageType.backendKeyData, Buffer.concat([int32(processId), int32(secretKey)]));
}

export function readyForQuery(status: 'I' | 'T' | 'E' = 'I'): Buffer {
  return message(MessageType.readyForQuery, Buffer.from(status, 'latin1'));
}

export const PARSE_COMPLETE = message(MessageType.parseComplete);
export const CLOSE_COMPLETE = message(MessageType.closeComplete);

/** NegotiateProtocolVersion: the newest minor version served and the `_pq_.` options not understood. */
export function negotiateProtocolVersion(minor: number, unsupported: string[]): Buffer {
  return message(MessageType.negotiateProtocolVersion, Buffer.concat([int32(minor), int32(unsupported.length), ...unsupported.map(cstring)]));
}

// ---- Frontend messages the gateway sends to Postgres ----

/** A StartupMessage (3.0) with these parameters. */
export function startupMessage(parameters: Record<string, string>): Buffer {
  const body = Buffer.concat([int32(PROTOCOL_3_0), ...Object.entries(parameters).flatMap(([name, value]) => [cstring(name), cstring(value)]), Buffer.from([0])]);
  return Buffer.concat([int32(4 + body.length), body]);
}

export function cancelRequest(processId: number, secretKey: Buffer): Buffer {
  return Buffer.concat([int32(16 + secretKey.length - 4), int32(CANCEL_REQUEST_CODE), int32(processId), secretKey]);
}

export function saslInitialResponse(mechanism: string, data: string): Buffer {
  const payload = Buffer.from(data, 'utf8');
  return message(MessageType.password, Buffer.concat([cstring(mechanism), int32(payload.length), payload]));
}

export function saslResponse(data: string): Buffer {
  return message(MessageType.password, Buffer.from(data, 'utf8'));
}

export function simpleQuery(sql: string): Buffer {
  return message(MessageType.query, cstring(sql));
}

export const TERMINATE = message(MessageType.terminate);

/** A Parse of `query` with `parameterTypes` (raw bytes: count and OIDs, as the client sent them) named `name`. */
export function parseMessage(name: string, query: string, parameterTypes: Buffer): Buffer {
  return message(MessageType.parse, Buffer.concat([cstring(name), cstring(query), parameterTypes]));
}

// ---- Readers of the frontend messages the pooler rewrites ----

/** Parse: statement name, query, and the parameter types as raw bytes. */
export function readParse(msg: Buffer): { name: string; query: string; parameterTypes: Buffer } {
  const name = readCString(msg, 5);
  const query = readCString(msg, name.next);
  return { name: name.value, query: query.value, parameterTypes: msg.subarray(query.next) };
}

/** Bind: portal and statement names, and where the rest begins. */
export function readBind(msg: Buffer): { portal: string; statement: string; rest: Buffer } {
  const portal = readCString(msg, 5);
  const statement = readCString(msg, portal.next);
  return { portal: portal.value, statement: statement.value, rest: msg.subarray(statement.next) };
}

export function bindMessage(portal: string, statement: string, rest: Buffer): Buffer {
  return message(MessageType.bind, Buffer.concat([cstring(portal), cstring(statement), rest]));
}

/** Describe or Close: 'S' (statement) or 'P' (portal), and the name. */
export function readTarget(msg: Buffer): { target: 'S' | 'P'; name: string } {
  if (msg.length < 7) throw new ProtocolError('invalid Describe or Close message: too short');
  const target = String.fromCharCode(msg[5]);
  if (target !== 'S' && target !== 'P') throw new ProtocolError(`invalid Describe or Close target "${target}": S or P expected`);
  return { target, name: readCString(msg, 6).value };
}

export function targetMessage(type: number, target: 'S' | 'P', name: string): Buffer {
  return message(type, Buffer.concat([Buffer.from(target, 'latin1'), cstring(name)]));
}

/** The query text of a Query message. */
export function readQuery(msg: Buffer): string {
  return readCString(msg, 5).value;
}

// ---- Framing ----

/** Where a {@link FrameScanner} sends what it cuts: slices to forward as they are, and whole interesting messages. */
export interface FrameSink {
  pass(bytes: Buffer): void;
  message(type: number, whole: Buffer): void;
}

/**
 * Cuts a stream of v3 messages (type byte, int32 length including itself, body). Messages whose type `interesting`
 * accepts are handed to the sink whole (a slice of the input when they arrive in one piece, else a copy);
 * everything else is handed on as slices of the input as it arrives, so large rows and COPY data stream through
 * without being buffered. The order of the sink's calls is the order of the stream.
 */
export class FrameScanner {
  private readonly header = Buffer.alloc(5);
  private headerFill = 0;
  /** Bytes of the current uninteresting message still to pass. */
  private remaining = 0;
  private collecting: Buffer | null = null;
  private collectFill = 0;

  constructor(
    private readonly interesting: (type: number) => boolean,
    /** The longest message accepted (a longer one is a ProtocolError). */
    private readonly maxMessageBytes: number,
    /** Names the peer in errors ("client", "server"). */
    private readonly peer: string,
  ) {}

  /** Whether the scanner is between messages (nothing half-read). */
  get atBoundary(): boolean {
    return this.remaining === 0 && this.collecting === null && this.headerFill === 0;
  }

  push(chunk: Buffer, sink: FrameSink): void {
    const length = chunk.length;
    let offset = 0;
    let passStart = -1;
    const flush = (end: number) => {
      if (passStart >= 0 && end > passStart) sink.pass(chunk.subarray(passStart, end));
      passStart = -1;
    };
    while (offset < length) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, length - offset);
        if (passStart < 0) passStart = offset;
        offset += take;
        this.remaining -= take;
        continue;
      }
      if (this.collecting) {
        const take = Math.min(this.collecting.length - this.collectFill, length - offset);
        chunk.copy(this.collecting, this.collectFill, offset, offset + take);
        this.collectFill += take;
        offset += take;
        if (this.collectFill === this.collecting.length) {
          const whole = this.collecting;
          this.collecting = null;
          sink.message(whole[0], whole);
        }
        continue;
      }
      if (this.headerFill === 0 && length - offset >= 5) {
        const type = chunk[offset];
        const total = 1 + this.checkLength(chunk.readInt32BE(offset + 1), type);
        if (this.interesting(type)) {
          flush(offset);
          if (length - offset >= total) {
            sink.message(type, chunk.subarray(offset, offset + total));
            offset += total;
          } else {
            this.collecting = Buffer.allocUnsafe(total);
            chunk.copy(this.collecting, 0, offset, length);
            this.collectFill = length - offset;
            offset = length;
          }
        } else {
          if (passStart < 0) passStart = offset;
          const take = Math.min(total, length - offset);
          offset += take;
          this.remaining = total - take;
        }
        continue;
      }
      // A header split across chunks: gather its five bytes first.
      flush(offset);
      const take = Math.min(5 - this.headerFill, length - offset);
      chunk.copy(this.header, this.headerFill, offset, offset + take);
      this.headerFill += take;
      offset += take;
      if (this.headerFill < 5) continue;
      this.headerFill = 0;
      const type = this.header[0];
      const total = 1 + this.checkLength(this.header.readInt32BE(1), type);
      if (this.interesting(type)) {
        this.collecting = Buffer.allocUnsafe(total);
        this.header.copy(this.collecting, 0, 0, 5);
        this.collectFill = 5;
        if (total === 5) {
          const whole = this.collecting;
          this.collecting = null;
          sink.message(type, whole);
        }
      } else {
        sink.pass(Buffer.from(this.header));
        this.remaining = total - 5;
      }
    }
    flush(length);
  }

  private checkLength(length: number, type: number): number {
    if (length < 4) throw new ProtocolError(`invalid message length ${length} from the ${this.peer} (type "${String.fromCharCode(type)}")`);
    if (length + 1 > this.maxMessageBytes) {
      throw new ProtocolError(
        `message of ${length + 1} bytes (type "${String.fromCharCode(type)}") from the ${this.peer} exceeds the limit of ${this.maxMessageBytes} bytes`,
        '54000',
      );
    }
    return length;
  }
}
