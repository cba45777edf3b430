/** Connection strings: the API hands them out without a password (none is kept); the caller puts one in. */

/** `uri` (postgresql://role@host/db?...) with `password` put in, percent-encoded. */
export function withPassword(uri: string, password: string): string {
  const url = new URL(uri);
  if (url.protocol !== 'postgresql:' && url.protocol !== 'postgres:') {
    throw new TypeError(`${JSON.stringify(uri)} is not a postgresql:// URI: give a connection string GetConnectionString answered`);
  }
  url.password = encodeURIComponent(password);
  return url.toString();
}
