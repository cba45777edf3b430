/**
 * The cheapest PostgreSQL "pooler" Node can run: a 1:1 TCP relay that copies bytes between each client and its own
 * connection to Postgres, with no parsing, no pooling, no TLS. `make bench-gateway` runs it as a setup of its own, in
 * its own process: its tps is the floor of what any pooler written for Node does on this machine, so the gateway is
 * judged against PgBouncer and against this relay. Public APIs only (a `data` event and a write per chunk, with
 * backpressure), as a Node program would ordinarily relay.
 *
 * Usage: node dist/bench/node-relay.js <listen port> <postgres host:port>; prints `relay ready` once listening.
 */
import net from 'node:net';

const [listenPort, target] = process.argv.slice(2);
const separator = target?.lastIndexOf(':') ?? -1;
if (!listenPort || separator < 0) {
  console.error('usage: node-relay.js <listen port> <postgres host:port>');
  process.exit(2);
}
const host = target.slice(0, separator);
const port = Number(target.slice(separator + 1));

/** Copies `from` to `to`, pausing `from` while `to` cannot take more. */
function relay(from: net.Socket, to: net.Socket): void {
  from.on('data', (chunk: Buffer) => {
    if (!to.write(chunk)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  });
  from.on('close', () => to.destroy());
  from.on('error', () => to.destroy());
}

const server = net.createServer({ noDelay: true }, (client) => {
  const upstream = net.connect({ host, port, noDelay: true });
  relay(client, upstream);
  relay(upstream, client);
});
server.listen(Number(listenPort), '127.0.0.1', () => console.log('relay ready'));
process.once('SIGTERM', () => {
  server.close();
  process.exit(0);
});
