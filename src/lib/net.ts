/**
 * Small network helpers.
 */
import net from 'node:net';

/** A TCP port free on 127.0.0.1 right now (for children that cannot listen on port 0 and report it, like Postgres). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address() as net.AddressInfo;
      server.close(() => resolve(address.port));
    });
  });
}
