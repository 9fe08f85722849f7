import { describe, expect, it } from 'vitest';
import { initialState, orderedKeys, parseSnapshot, postsInOrder, reducer } from './state';

describe('orderedKeys', () => {
  it('keeps the server’s order, even for integer-like ids', () => {
    const text = '{"b":{"id":"b","comments":[{"id":"x"}]},"12345678":{"id":"12345678"},"a\\"q":{}}';
    expect(orderedKeys(text)).toEqual(['b', '12345678', 'a"q']);
  });
});

describe('reducer', () => {
  const snapshot = (text: string) => parseSnapshot(text);

  it('applies a snapshot in creation order', () => {
    const state = reducer(
      initialState,
      snapshot('{"p2":{"id":"p2","title":"two","comments":[]},"1":{"id":"1","title":"one","comments":[]}}'),
    );
    expect(postsInOrder(state).map((p) => p.title)).toEqual(['two', 'one']);
    expect(state.loaded).toBe(true);
  });

  it('shows a created post at once and keeps it until the server has it', () => {
    let state = reducer(initialState, { type: 'created', post: { id: 'n', title: 'new' } });
    state = reducer(state, snapshot('{}'));
    expect(postsInOrder(state).map((p) => p.id)).toEqual(['n']);
    state = reducer(state, { type: 'post', post: { id: 'n', title: 'new', comments: [] } });
    expect(state.unconfirmed).toEqual({});
  });

  it('never moves a comment back to pending', () => {
    let state = reducer(initialState, {
      type: 'post',
      post: { id: 'p', title: 't', comments: [{ id: 'c', content: 'x', status: 'approved' }] },
    });
    state = reducer(state, {
      type: 'post',
      post: { id: 'p', title: 't', comments: [{ id: 'c', content: 'x', status: 'pending' }] },
    });
    expect(state.posts.p.comments[0].status).toBe('approved');
  });

  it('adds a live post last and updates a known one in place', () => {
    let state = reducer(initialState, snapshot('{"a":{"id":"a","title":"A","comments":[]}}'));
    state = reducer(state, { type: 'post', post: { id: 'b', title: 'B', comments: [] } });
    state = reducer(state, {
      type: 'post',
      post: { id: 'a', title: 'A', comments: [{ id: 'c', content: 'hi', status: 'pending' }] },
    });
    expect(postsInOrder(state).map((p) => [p.id, p.comments.length])).toEqual([
      ['a', 1],
      ['b', 0],
    ]);
  });
});

describe('live comment events', () => {
  const base = () =>
    reducer(
      initialState,
      parseSnapshot(
        '{"p":{"id":"p","title":"t","comments":[{"id":"c1","content":"a","status":"pending"},{"id":"c2","content":"b","status":"pending"}]}}',
      ),
    );

  it('replaces a known comment in place and adds a new one last', () => {
    let state = reducer(base(), {
      type: 'comment',
      postId: 'p',
      comment: { id: 'c1', content: 'a', status: 'approved' },
    });
    state = reducer(state, { type: 'comment', postId: 'p', comment: { id: 'c3', content: 'c', status: 'pending' } });
    expect(state.posts.p.comments.map((c) => [c.id, c.status])).toEqual([
      ['c1', 'approved'],
      ['c2', 'pending'],
      ['c3', 'pending'],
    ]);
  });

  it('never moves a comment back to pending', () => {
    const approved = reducer(base(), {
      type: 'comment',
      postId: 'p',
      comment: { id: 'c1', content: 'a', status: 'rejected' },
    });
    const late = reducer(approved, {
      type: 'comment',
      postId: 'p',
      comment: { id: 'c1', content: 'a', status: 'pending' },
    });
    expect(late).toBe(approved);
  });

  it('confirms a comment we made, and drops one for a post it does not have', () => {
    let state = reducer(base(), {
      type: 'comments',
      postId: 'p',
      comments: [{ id: 'mine', content: 'm', status: 'pending' }],
    });
    expect(state.unconfirmed).toEqual({ mine: true });
    state = reducer(state, { type: 'comment', postId: 'p', comment: { id: 'mine', content: 'm', status: 'approved' } });
    expect(state.unconfirmed).toEqual({});
    expect(state.posts.p.comments.find((c) => c.id === 'mine')?.status).toBe('approved');
    expect(reducer(state, { type: 'comment', postId: 'nope', comment: { id: 'x', content: '', status: 'pending' } })).toBe(state);
  });
});

describe('comments from a POST answer', () => {
  const base = () =>
    reducer(
      initialState,
      parseSnapshot('{"p":{"id":"p","title":"t","comments":[{"id":"c1","content":"a","status":"approved"}]}}'),
    );

  it('applies the returned list and keeps a new comment until query has it', () => {
    let state = reducer(base(), {
      type: 'comments',
      postId: 'p',
      comments: [
        { id: 'c1', content: 'a', status: 'approved' },
        { id: 'c2', content: 'b', status: 'pending' },
      ],
    });
    expect(state.posts.p.comments.map((c) => c.id)).toEqual(['c1', 'c2']);
    expect(state.unconfirmed).toEqual({ c2: true });
    // query's older copy of the post, without c2, does not drop it
    state = reducer(state, {
      type: 'post',
      post: { id: 'p', title: 't', comments: [{ id: 'c1', content: 'a', status: 'approved' }] },
    });
    expect(state.posts.p.comments.map((c) => c.id)).toEqual(['c1', 'c2']);
    // nor does a snapshot
    state = reducer(
      state,
      parseSnapshot('{"p":{"id":"p","title":"t","comments":[{"id":"c1","content":"a","status":"approved"}]}}'),
    );
    expect(state.posts.p.comments.map((c) => c.id)).toEqual(['c1', 'c2']);
    // once query lists it, query's copy wins
    state = reducer(state, {
      type: 'post',
      post: {
        id: 'p',
        title: 't',
        comments: [
          { id: 'c1', content: 'a', status: 'approved' },
          { id: 'c2', content: 'b', status: 'rejected' },
        ],
      },
    });
    expect(state.posts.p.comments[1].status).toBe('rejected');
    expect(state.unconfirmed).toEqual({});
  });

  it('ignores comments for a post it does not know', () => {
    const state = base();
    expect(reducer(state, { type: 'comments', postId: 'nope', comments: [] })).toBe(state);
  });

  it('does not add a created post twice', () => {
    const state = base();
    expect(reducer(state, { type: 'created', post: { id: 'p', title: 't' } })).toBe(state);
  });

  it('skips unusable entries in a snapshot', () => {
    const state = reducer(initialState, parseSnapshot('{"a":null,"b":{"id":"b","title":7,"comments":"x"},"c":[1]}'));
    expect(postsInOrder(state)).toEqual([{ id: 'b', title: '', comments: [] }]);
  });
});
