/**
 * Paged lists as async iterators: `for await (const branch of spg.listBranches({ projectId }))` walks every page,
 * asking for the next one only when the loop gets there. Each page is a separate, retried call, so a control plane
 * restarted between two pages costs a retry, not the walk (page tokens are kept by the caller, not the server).
 */

/** A page as the list RPCs answer it. */
export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

/** Items per page when the caller does not say. */
export const DEFAULT_PAGE_SIZE = 100;

/** Yields every item of every page that `fetchPage` answers, from the first page until one has no next token. */
export async function* paginate<T>(fetchPage: (pageToken: string) => Promise<Page<T>>): AsyncGenerator<T, void, undefined> {
  let pageToken = '';
  const seen = new Set<string>();
  for (;;) {
    const { items, nextPageToken } = await fetchPage(pageToken);
    yield* items;
    if (nextPageToken === '') return;
    // A server that answered the same token twice would loop forever; stop instead.
    if (seen.has(nextPageToken)) throw new Error(`the control plane answered page token ${nextPageToken} twice: stopping the list instead of looping`);
    seen.add(nextPageToken);
    pageToken = nextPageToken;
  }
}
