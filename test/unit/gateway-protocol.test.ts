/**
 * The gateway's wire protocol without processes: FrameScanner under every chunking (fast-check), its length checks,
 * the first packet (SSLRequest, GSSENCRequest, CancelRequest, startup) and its malformed forms, the builders
 * against the readers, endpoint naming (SNI and options) and the failed-login limit of routing.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  bindMessage,
  cancelRequest,
  CANCEL_REQUEST_CODE,
  errorResponse,
  firstPacketLength,
  FrameScanner,
  GSSENC_REQUEST_CODE,
  MAX_STARTUP_PACKET_BYTES,
  message,
  MessageType,
  parseErrorFields,
  parseFirstPacket,
  parseMessage,
  ProtocolError,
  PROTOCOL_3_0,
  readBind,
  readCString,
  readParse,
  readQuery,
  readTarget,
  simpleQuery,
  SSL_REQUEST_CODE,
  startupMessage,
  targetMessage,
  type FrameSink,
} from '../../src/gateway/protocol.js';
import { endpointOf, Routing, RoutingError } from '../../src/gateway/routing.js';

/** What a sink saw: whole messages, and the passed bytes between them (merged). */
type Event = { kind: 'message'; type: number; bytes: Buffer } | { kind: 'bytes'; bytes: Buffer };

class RecordingSink implements FrameSink {
  readonly events: Event[] = [];
  pass(bytes: Buffer): void {
    expect(bytes.length, 'an empty pass').to.be.greaterThan(0);
    const last = this.events.at(-1);
    // Copied: the scanner hands out slices of chunks the caller may reuse.
    if (last?.kind === 'bytes') last.bytes = Buffer.concat([last.bytes, bytes]);
    else this.events.push({ kind: 'bytes', bytes: Buffer.from(bytes) });
  }
  message(type: number, whole: Buffer): void {
    this.events.push({ kind: 'message', type, bytes: Buffer.from(whole) });
  }
}

/** The events a correct scanner produces for `messages` (uninteresting neighbours merged). */
function expectedEvents(messages: Buffer[], interesting: (type: number) => boolean): Event[] {
  const events: Event[] = [];
  for (const msg of messages) {
    const last = events.at(-1);
    if (interesting(msg[0])) events.push({ kind: 'message', type: msg[0], bytes: msg });
    else if (last?.kind === 'bytes') last.bytes = Buffer.concat([last.bytes, msg]);
    else events.push({ kind: 'bytes', bytes: msg });
  }
  return events;
}

/** Feeds `stream` cut at `cuts` (sorted offsets); answers the sink and whether the scanner said "between messages" at each cut. */
function scan(stream: Buffer, cuts: number[], interesting: (type: number) => boolean, maxMessageBytes = 1 << 20) {
  const scanner = new FrameScanner(interesting, maxMessageBytes, 'client');
  const sink = new RecordingSink();
  const boundaries: boolean[] = [];
  let start = 0;
  for (const cut of [...cuts, stream.length]) {
    // A fresh copy per chunk, overwritten afterwards: nothing may keep pointing into a chunk once it was handed on.
    const chunk = Buffer.from(stream.subarray(start, cut));
    scanner.push(chunk, sink);
    chunk.fill(0xee);
    boundaries.push(scanner.atBoundary);
    start = cut;
  }
  return { events: sink.events, boundaries };
}

/** Offsets where a message of `messages` starts (and the end of the stream). */
function messageBoundaries(messages: Buffer[]): Set<number> {
  const boundaries = new Set<number>([0]);
  let offset = 0;
  for (const msg of messages) boundaries.add((offset += msg.length));
  return boundaries;
}

const SAMPLE = [
  message(MessageType.query, Buffer.from('SELECT 1\0')),
  message(MessageType.copyData, Buffer.alloc(300, 7)),
  message(MessageType.sync),
  message(MessageType.copyData, Buffer.from('x')),
  message(MessageType.copyData, Buffer.alloc(0)),
  message(MessageType.parse, Buffer.from('s1\0SELECT $1\0\0\0')),
  message(MessageType.terminate),
];
const notCopyData = (type: number) => type !== MessageType.copyData;

function caught(action: () => unknown): Error {
  try {
    action();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected an error');
}

function protocolError(action: () => unknown): ProtocolError {
  const error = caught(action);
  expect(error).to.be.instanceOf(ProtocolError);
  return error as ProtocolError;
}

function routingError(action: () => unknown): RoutingError {
  const error = caught(action);
  expect(error).to.be.instanceOf(RoutingError);
  return error as RoutingError;
}

/** A first packet: its length, then `body`. */
function packet(...words: Array<number | Buffer | string>): Buffer {
  const parts = words.map((word) => {
    if (typeof word === 'number') {
      const out = Buffer.alloc(4);
      out.writeInt32BE(word, 0);
      return out;
    }
    return typeof word === 'string' ? Buffer.from(word, 'utf8') : word;
  });
  const body = Buffer.concat(parts);
  const length = Buffer.alloc(4);
  length.writeInt32BE(4 + body.length, 0);
  return Buffer.concat([length, body]);
}

describe('gateway protocol: FrameScanner', () => {
  const stream = Buffer.concat(SAMPLE);

  it('delivers the same messages and bytes wherever a two-chunk stream is cut, and knows when it is between messages', () => {
    const expected = expectedEvents(SAMPLE, notCopyData);
    const starts = messageBoundaries(SAMPLE);
    for (let cut = 0; cut <= stream.length; cut++) {
      const { events, boundaries } = scan(stream, [cut], notCopyData);
      expect(events, `cut at byte ${cut}`).to.deep.equal(expected);
      expect(boundaries[0], `atBoundary after byte ${cut}`).to.equal(starts.has(cut));
      expect(boundaries[1]).to.equal(true);
    }
  });

  it('delivers the same messages when the stream arrives one byte at a time', () => {
    for (const interesting of [notCopyData, () => true, () => false, (type: number) => type === MessageType.terminate]) {
      const cuts = Array.from({ length: stream.length - 1 }, (_, index) => index + 1);
      expect(scan(stream, cuts, interesting).events).to.deep.equal(expectedEvents(SAMPLE, interesting));
    }
  });

  it('loses, duplicates and reorders nothing for any messages under any chunking (fast-check)', () => {
    const messageArbitrary = fc
      .record({ type: fc.integer({ min: 0, max: 255 }), body: fc.oneof(fc.uint8Array({ maxLength: 12 }), fc.uint8Array({ minLength: 100, maxLength: 700 })) })
      .map(({ type, body }) => message(type, Buffer.from(body)));
    fc.assert(
      fc.property(
        fc.array(messageArbitrary, { maxLength: 12 }),
        fc.uniqueArray(fc.integer({ min: 0, max: 255 }), { maxLength: 64 }),
        fc.uniqueArray(fc.nat(), { maxLength: 40 }),
        (messages, interestingTypes, rawCuts) => {
          const interesting = (type: number) => interestingTypes.includes(type);
          const whole = Buffer.concat(messages);
          const cuts = whole.length === 0 ? [] : [...new Set(rawCuts.map((cut) => cut % whole.length))].sort((a, b) => a - b);
          const { events, boundaries } = scan(whole, cuts, interesting);
          expect(events).to.deep.equal(expectedEvents(messages, interesting));
          const starts = messageBoundaries(messages);
          cuts.forEach((cut, index) => expect(boundaries[index], `atBoundary at ${cut}`).to.equal(starts.has(cut)));
          expect(boundaries.at(-1)).to.equal(true);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('refuses a length below 4 as a protocol violation (08P01), whole or with the header split', () => {
    for (const length of [0, 3, -1, -2_147_483_648]) {
      const header = Buffer.alloc(5);
      header[0] = MessageType.query;
      header.writeInt32BE(length, 1);
      for (const cuts of [[], [1], [3]]) {
        const error = protocolError(() => scan(Buffer.concat([SAMPLE[0], header]), cuts.map((cut) => SAMPLE[0].length + cut), () => true));
        expect(error.code).to.equal('08P01');
        expect(error.message).to.contain(`invalid message length ${length} from the client`);
      }
    }
  });

  it('refuses a message above the limit with 54000 program_limit_exceeded, naming the limit, and accepts one at it', () => {
    const limit = 1024;
    for (const interesting of [() => true, () => false]) {
      for (const cuts of [[], [2]]) {
        const oversized = Buffer.alloc(5);
        oversized[0] = MessageType.copyData;
        oversized.writeInt32BE(limit, 1); // 1 + 1024 bytes: one too many
        const error = protocolError(() => scan(oversized, cuts, interesting, limit));
        expect(error.code).to.equal('54000');
        expect(error.message).to.contain(`message of ${limit + 1} bytes`).and.to.contain(`the limit of ${limit} bytes`);
        const atLimit = message(MessageType.copyData, Buffer.alloc(limit - 5));
        expect(scan(atLimit, cuts, interesting, limit).events).to.deep.equal(expectedEvents([atLimit], interesting));
      }
    }
  });
});

describe('gateway protocol: the first packet', () => {
  it('recognizes SSLRequest, GSSENCRequest and CancelRequest', () => {
    expect(parseFirstPacket(packet(SSL_REQUEST_CODE))).to.deep.equal({ kind: 'ssl' });
    expect(parseFirstPacket(packet(GSSENC_REQUEST_CODE))).to.deep.equal({ kind: 'gssenc' });
    const cancel = parseFirstPacket(cancelRequest(4242, Buffer.from([0, 0, 0x30, 0x39])));
    expect(cancel).to.deep.equal({ kind: 'cancel', processId: 4242, secretKey: Buffer.from([0, 0, 0x30, 0x39]) });
    // Protocol 3.2 allows longer keys (up to 256 bytes).
    const longKey = Buffer.alloc(32, 9);
    expect(parseFirstPacket(cancelRequest(7, longKey))).to.deep.equal({ kind: 'cancel', processId: 7, secretKey: longKey });
  });

  it('reads a startup packet and its parameters, and round-trips startupMessage', () => {
    const parameters = { user: 'owner', database: 'shop', options: '-c search_path=app endpoint=ep-x', application_name: 'prüfung ✓' };
    const parsed = parseFirstPacket(startupMessage(parameters));
    expect(parsed).to.deep.equal({ kind: 'startup', protocol: PROTOCOL_3_0, parameters: new Map(Object.entries(parameters)) });
    // A newer minor version is read (the gateway negotiates it down).
    const minor = parseFirstPacket(packet((3 << 16) | 2, 'user\0u\0\0'));
    expect(minor).to.deep.include({ kind: 'startup', protocol: (3 << 16) | 2 });
    // No parameters at all is well formed (the gateway then asks for a user).
    expect(parseFirstPacket(packet(PROTOCOL_3_0, '\0'))).to.deep.equal({ kind: 'startup', protocol: PROTOCOL_3_0, parameters: new Map() });
  });

  it('refuses malformed startup packets with a message naming what is wrong', () => {
    const cases: Array<{ packet: Buffer; code: string; says: string }> = [
      { packet: packet(PROTOCOL_3_0, 'user\0owner\0'), code: '08P01', says: 'does not end with an empty name' },
      { packet: packet(PROTOCOL_3_0), code: '08P01', says: 'does not end with an empty name' },
      { packet: packet(PROTOCOL_3_0, 'user\0owner'), code: '08P01', says: 'not terminated' },
      { packet: packet(PROTOCOL_3_0, 'user\0'), code: '08P01', says: 'parameter "user" has no value' },
      { packet: packet(PROTOCOL_3_0, 'user\0owner\0\0junk'), code: '08P01', says: 'bytes after the parameter list' },
      { packet: packet(2 << 16, 'user\0owner\0\0'), code: '0A000', says: 'unsupported frontend protocol 2.0' },
      { packet: packet(4 << 16, 'user\0owner\0\0'), code: '0A000', says: 'unsupported frontend protocol 4.0' },
      { packet: packet(CANCEL_REQUEST_CODE, 1), code: '08P01', says: 'invalid cancel request' },
      { packet: packet(CANCEL_REQUEST_CODE, 1, Buffer.alloc(257)), code: '08P01', says: 'invalid cancel request' },
    ];
    for (const { packet: bytes, code, says } of cases) {
      const error = protocolError(() => parseFirstPacket(bytes));
      expect(error.message, bytes.toString('hex')).to.contain(says);
      expect(error.code, error.message).to.equal(code);
    }
    // An SSLRequest with a body is not an SSLRequest.
    expect(protocolError(() => parseFirstPacket(packet(SSL_REQUEST_CODE, 0))).message).to.contain('unsupported frontend protocol');
  });

  it('bounds the first packet to 8..10000 bytes', () => {
    const header = (length: number) => {
      const out = Buffer.alloc(4);
      out.writeInt32BE(length, 0);
      return out;
    };
    expect(firstPacketLength(header(8))).to.equal(8);
    expect(firstPacketLength(header(MAX_STARTUP_PACKET_BYTES))).to.equal(MAX_STARTUP_PACKET_BYTES);
    for (const length of [0, 3, 7, MAX_STARTUP_PACKET_BYTES + 1, 2 ** 31 - 1, -1]) {
      const error = protocolError(() => firstPacketLength(header(length)));
      expect(error.code).to.equal('08P01');
      expect(error.message).to.contain(`invalid startup packet length ${length}`).and.to.contain('8 to 10000 bytes');
    }
  });

  it('never throws anything but a ProtocolError on random first packets (fast-check)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4, maxLength: 200 }), (bytes) => {
        const buffer = Buffer.from(bytes);
        buffer.writeInt32BE(buffer.length, 0);
        if (buffer.length < 8) {
          expect(() => firstPacketLength(buffer)).to.throw(ProtocolError);
          return;
        }
        try {
          parseFirstPacket(buffer);
        } catch (error) {
          expect(error).to.be.instanceOf(ProtocolError);
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('gateway protocol: builders and readers', () => {
  const text = fc.string({ unit: 'grapheme', maxLength: 40 }).filter((value) => !value.includes('\0'));

  it('round-trips Parse, Bind, Describe/Close and Query (fast-check)', () => {
    fc.assert(
      fc.property(text, text, fc.uint8Array({ maxLength: 20 }), text, (name, query, types, portal) => {
        const parsed = readParse(parseMessage(name, query, Buffer.from(types)));
        expect(parsed).to.deep.equal({ name, query, parameterTypes: Buffer.from(types) });
        const bind = bindMessage(portal, name, Buffer.from(types));
        expect(bind[0]).to.equal(MessageType.bind);
        expect(bind.readInt32BE(1)).to.equal(bind.length - 1);
        expect(readBind(bind)).to.deep.equal({ portal, statement: name, rest: Buffer.from(types) });
        for (const target of ['S', 'P'] as const) {
          expect(readTarget(targetMessage(MessageType.describe, target, name))).to.deep.equal({ target, name });
        }
        expect(readQuery(simpleQuery(query))).to.equal(query);
      }),
    );
  });

  it('refuses a Describe or Close that is too short or names neither a statement nor a portal', () => {
    expect(protocolError(() => readTarget(message(MessageType.close, Buffer.from('S')))).message).to.contain('too short');
    expect(protocolError(() => readTarget(message(MessageType.describe, Buffer.from('X\0')))).message).to.contain('"X"');
    expect(protocolError(() => readTarget(message(MessageType.describe, Buffer.from('Sname')))).message).to.contain('not terminated');
    expect(protocolError(() => readParse(message(MessageType.parse, Buffer.from('name\0SELECT 1')))).message).to.contain('not terminated');
    expect(protocolError(() => readCString(Buffer.from('abc'), 0)).code).to.equal('08P01');
  });

  it('round-trips ErrorResponse and NoticeResponse fields', () => {
    const fields = { code: '53300', message: 'too many clients: 5, the limit', detail: 'détail', hint: 'Close idle connections.' };
    const error = errorResponse(fields);
    expect(error[0]).to.equal(MessageType.errorResponse);
    expect(error.readInt32BE(1)).to.equal(error.length - 1);
    expect(Object.fromEntries(parseErrorFields(error))).to.deep.equal({ S: 'FATAL', V: 'FATAL', C: '53300', M: fields.message, D: 'détail', H: fields.hint });
    const notice = errorResponse({ severity: 'ERROR', code: '01000', message: 'note' }, true);
    expect(notice[0]).to.equal(MessageType.noticeResponse);
    expect(Object.fromEntries(parseErrorFields(notice))).to.deep.equal({ S: 'ERROR', V: 'ERROR', C: '01000', M: 'note' });
  });
});

describe('gateway routing: naming an endpoint', () => {
  const id = `ep-${'0123456789abcdef'.repeat(2)}`;
  const other = `ep-${'f'.repeat(32)}`;

  it('takes the endpoint from the TLS server name, with or without -pooler', () => {
    expect(endpointOf(`${id}.localhost`, 'localhost', undefined)).to.deep.equal({ name: { endpointId: id, pooled: false }, options: '' });
    expect(endpointOf(`${id}-pooler.localhost`, 'localhost', '')).to.deep.equal({ name: { endpointId: id, pooled: true }, options: '' });
    expect(endpointOf(`${id}.db.example.com`, 'db.example.com', '-c work_mem=64MB').options).to.equal('-c work_mem=64MB');
  });

  it('takes it from options=endpoint=…, keeping the other options for Postgres', () => {
    const named = endpointOf(undefined, 'localhost', `-c search_path=app endpoint=${id}-pooler -c statement_timeout=5s`);
    expect(named).to.deep.equal({ name: { endpointId: id, pooled: true }, options: '-c search_path=app -c statement_timeout=5s' });
    expect(endpointOf(undefined, 'localhost', `--endpoint=${id}`).name).to.deep.equal({ endpointId: id, pooled: false });
    // A server name outside the domain (an IP, a load balancer's name) leaves the choice to options.
    expect(endpointOf('db.internal', 'localhost', `endpoint=${id}`).name.endpointId).to.equal(id);
    // Both naming the same endpoint is fine.
    expect(endpointOf(`${id}.localhost`, 'localhost', `endpoint=${id}`).name.endpointId).to.equal(id);
  });

  it('refuses two different endpoints, naming both', () => {
    const error = routingError(() => endpointOf(`${id}.localhost`, 'localhost', `endpoint=${other}`));
    expect(error.code).to.equal('08001');
    expect(error.message).to.contain(id).and.to.contain(other);
  });

  it('refuses a client that names no endpoint, with a hint that says how to name one', () => {
    for (const [serverName, options, says] of [
      [undefined, undefined, 'the client sent no server name (SNI)'],
      ['localhost', '-c work_mem=1MB', 'the server name "localhost" is not ep-<id>.localhost'],
      [`ep-${'0'.repeat(31)}.localhost`, undefined, 'is not ep-<id>.localhost'],
      [`${id.toUpperCase()}.localhost`, undefined, 'is not ep-<id>.localhost'],
    ] as const) {
      const error = routingError(() => endpointOf(serverName, 'localhost', options));
      expect(error.code).to.equal('08001');
      expect(error.message).to.contain('which endpoint?').and.to.contain(says);
      expect(error.hint).to.contain('ep-<id>.localhost').and.to.contain('options=endpoint=ep-<id>');
      expect(error.hint).to.not.contain('<domain>');
    }
    const malformed = routingError(() => endpointOf(undefined, 'localhost', 'endpoint=ep-nope'));
    expect(malformed.message).to.contain('"ep-nope" in options is not an endpoint id');
    expect(malformed.hint).to.contain('options=endpoint=ep-<id>');
  });
});

describe('gateway routing: failed password attempts', () => {
  it('delays the answers to a credential\'s proofs after 5 failures from an address, doubling up to 5 s, never refusing, and forgets them after the window', () => {
    let now = 1_000_000;
    const routing = new Routing({ controlPlane: {} as never, wakeTimeoutMs: 1000, now: () => now });
    const endpointId = `ep-${'a'.repeat(32)}`;
    const delays: number[] = [];
    for (let attempt = 0; attempt < 12; attempt++) {
      delays.push(routing.authDelayMs('10.0.0.1', endpointId, 'owner'));
      routing.recordAuthFailure('10.0.0.1', endpointId, 'owner');
      now += 1000;
    }
    expect(delays).to.deep.equal([0, 0, 0, 0, 0, 100, 200, 400, 800, 1600, 3200, 5000]);
    // Another address, another role and another endpoint are not slowed by this address' failures.
    expect(routing.authDelayMs('10.0.0.2', endpointId, 'owner')).to.equal(0);
    expect(routing.authDelayMs('10.0.0.1', endpointId, 'reader')).to.equal(0);
    expect(routing.authDelayMs('10.0.0.1', `ep-${'b'.repeat(32)}`, 'owner')).to.equal(0);
    now += 60_000;
    expect(routing.authDelayMs('10.0.0.1', endpointId, 'owner')).to.equal(0);
  });

  it('slows a credential guessed from many addresses at once', () => {
    const routing = new Routing({ controlPlane: {} as never, wakeTimeoutMs: 1000 });
    const endpointId = `ep-${'a'.repeat(32)}`;
    for (let attempt = 0; attempt < 21; attempt++) routing.recordAuthFailure(`10.0.1.${attempt}`, endpointId, 'owner');
    expect(routing.authDelayMs('10.0.2.1', endpointId, 'owner')).to.equal(200);
  });
});
