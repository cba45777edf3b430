/**
 * Pages of the public API's lists. A page token is the last id of the previous page (base64url, opaque to callers):
 * a paged walk goes by id, so items created or deleted between two pages never shift the rest, and any control
 * plane, a restarted one included, continues the walk (no cursor state is kept). page_size 0 answers everything in
 * the catalog's own order, as before paging existed.
 */
import { invalidArgument } from '../lib/grpc/errors.js';

/** The largest page answered; a bigger page_size is cut to it. */
export const MAX_PAGE_SIZE = 1000;

/** What a paged list request carries. */
export interface PageRequest {
  pageSize: number;
  pageToken: string;
}

/** One page of `items` (each named by `idOf`) and the token of the next page ('' after the last). */
export function page<T>(items: readonly T[], idOf: (item: T) => string, request: PageRequest): { items: T[]; nextPageToken: string } {
  if (request.pageSize < 0) throw invalidArgument(`page_size ${request.pageSize} is negative: give 0 (everything) or the most items per page`);
  if (request.pageSize === 0 && request.pageToken === '') return { items: [...items], nextPageToken: '' };
  const after = request.pageToken === '' ? '' : pageTokenId(request.pageToken);
  const size = request.pageSize === 0 ? MAX_PAGE_SIZE : Math.min(request.pageSize, MAX_PAGE_SIZE);
  const rest = items.filter((item) => idOf(item) > after).sort((a, b) => (idOf(a) < idOf(b) ? -1 : idOf(a) > idOf(b) ? 1 : 0));
  const taken = rest.slice(0, size);
  const last = taken[taken.length - 1];
  return { items: taken, nextPageToken: rest.length > size && last !== undefined ? Buffer.from(idOf(last), 'utf8').toString('base64url') : '' };
}

function pageTokenId(token: string): string {
  const id = Buffer.from(token, 'base64url').toString('utf8');
  if (!/^[a-z]{2}-[a-z0-9]+$/.test(id) || Buffer.from(id, 'utf8').toString('base64url') !== token) {
    throw invalidArgument(`page_token ${JSON.stringify(token)} is not one this API answered: pass the previous page's next_page_token, or none for the first page`);
  }
  return id;
}
