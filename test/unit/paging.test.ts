/**
 * Page tokens of the public API's lists: a walk by id that items created or deleted between two pages do not shift,
 * and a token the API never answered is the caller's mistake (INVALID_ARGUMENT), not INTERNAL.
 */
import { expect } from 'chai';
import { ServerError, Status } from 'nice-grpc';
import { page } from '../../src/control-plane/paging.js';

const id = (item: { id: string }) => item.id;
const items = ['pj-c', 'pj-a', 'pj-e', 'pj-b', 'pj-d'].map((value) => ({ id: value }));

describe('control plane list paging', () => {
  it('answers everything, in the stored order, without page_size or page_token (as before paging)', () => {
    expect(page(items, id, { pageSize: 0, pageToken: '' })).to.deep.equal({ items, nextPageToken: '' });
  });

  it('walks pages by id to the last, which has no next token', () => {
    const first = page(items, id, { pageSize: 2, pageToken: '' });
    expect(first.items.map(id)).to.deep.equal(['pj-a', 'pj-b']);
    const second = page(items, id, { pageSize: 2, pageToken: first.nextPageToken });
    expect(second.items.map(id)).to.deep.equal(['pj-c', 'pj-d']);
    const third = page(items, id, { pageSize: 2, pageToken: second.nextPageToken });
    expect(third).to.deep.equal({ items: [{ id: 'pj-e' }], nextPageToken: '' });
  });

  it('neither skips nor repeats an item when one before the position is deleted between pages', () => {
    const first = page(items, id, { pageSize: 2, pageToken: '' });
    const afterDelete = items.filter((item) => item.id !== 'pj-a');
    expect(page(afterDelete, id, { pageSize: 2, pageToken: first.nextPageToken }).items.map(id)).to.deep.equal(['pj-c', 'pj-d']);
  });

  it('refuses a token it never answered and a negative page size with INVALID_ARGUMENT naming the field', () => {
    for (const request of [
      { pageSize: 2, pageToken: 'not-a-token!' },
      { pageSize: 2, pageToken: Buffer.from('x').toString('base64url') },
      { pageSize: -1, pageToken: '' },
    ]) {
      let thrown: unknown;
      try {
        page(items, id, request);
      } catch (error) {
        thrown = error;
      }
      expect(thrown).to.be.instanceOf(ServerError);
      expect((thrown as ServerError).code).to.equal(Status.INVALID_ARGUMENT);
      expect((thrown as ServerError).details).to.match(/page_(token|size)/);
    }
  });
});
