import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { connectLive, LIVE_URL, type LiveStatus } from './live';
import type { Action } from './state';
import { FakeEventSource, installFakeEventSource, stubFetch } from './test/fakes';

let actions: Action[];
let statuses: LiveStatus[];
let stop: (() => void) | undefined;

beforeEach(() => {
  vi.useFakeTimers();
  installFakeEventSource();
  actions = [];
  statuses = [];
});

afterEach(() => {
  stop?.();
  stop = undefined;
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

function start(options = {}) {
  stop = connectLive(
    (a) => actions.push(a),
    (s) => statuses.push(s),
    options,
  );
}

const snapshot = { p1: { id: 'p1', title: 'One', comments: [] } };

describe('connectLive', () => {
  it('opens /posts/live and applies the snapshot, then post events', () => {
    start();
    const es = FakeEventSource.latest();
    expect(es.url).toBe(LIVE_URL);
    es.open();
    es.send('snapshot', snapshot);
    expect(statuses.at(-1)).toBe('live');
    expect(actions[0]).toMatchObject({ type: 'snapshot', order: ['p1'] });
    es.send('post', { id: 'p2', title: 'Two', comments: [{ id: 'c', content: 'x', status: 'pending' }] });
    expect(actions[1]).toEqual({
      type: 'post',
      post: { id: 'p2', title: 'Two', comments: [{ id: 'c', content: 'x', status: 'pending' }] },
    });
    es.send('comment', { id: 'c', postId: 'p2', content: 'x', status: 'approved' });
    expect(actions[2]).toEqual({
      type: 'comment',
      postId: 'p2',
      comment: { id: 'c', content: 'x', status: 'approved' },
    });
  });

  it('ignores garbled events', () => {
    start();
    const es = FakeEventSource.latest();
    es.send('snapshot', 'not json');
    es.send('post', '{"no":"id"}');
    es.send('post', '{{{');
    es.send('comment', '{"id":"c","content":"no post id"}');
    es.send('comment', '[[');
    expect(actions).toEqual([]);
  });

  it('shows reconnecting while the browser retries, and applies the fresh snapshot', () => {
    start();
    const es = FakeEventSource.latest();
    es.send('snapshot', snapshot);
    es.drop();
    expect(statuses.at(-1)).toBe('reconnecting');
    es.open();
    es.send('snapshot', { ...snapshot, p3: { id: 'p3', title: 'Missed', comments: [] } });
    expect(statuses.at(-1)).toBe('live');
    expect(actions.at(-1)).toMatchObject({ type: 'snapshot', order: ['p1', 'p3'] });
  });

  it('reconnects by itself with back-off when the browser gives up, loading GET /posts meanwhile', async () => {
    const fetch = stubFetch(() => new Response(JSON.stringify(snapshot)));
    start({ baseDelayMs: 100, maxDelayMs: 250 });
    const first = FakeEventSource.latest();
    first.send('snapshot', {});
    first.fail();
    expect(first.readyState).toBe(FakeEventSource.CLOSED);
    expect(statuses.at(-1)).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(0);
    expect(fetch).toHaveBeenCalledWith('/posts', expect.anything());
    expect(actions.at(-1)).toMatchObject({ type: 'snapshot', order: ['p1'] });

    await vi.advanceTimersByTimeAsync(99);
    expect(FakeEventSource.instances).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeEventSource.instances).toHaveLength(2);

    // Fails again: the delay doubles, up to the maximum.
    FakeEventSource.latest().fail();
    await vi.advanceTimersByTimeAsync(199);
    expect(FakeEventSource.instances).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeEventSource.instances).toHaveLength(3);
    FakeEventSource.latest().fail();
    await vi.advanceTimersByTimeAsync(250);
    expect(FakeEventSource.instances).toHaveLength(4);

    // A snapshot resets the back-off.
    FakeEventSource.latest().send('snapshot', snapshot);
    FakeEventSource.latest().fail();
    await vi.advanceTimersByTimeAsync(100);
    expect(FakeEventSource.instances).toHaveLength(5);
  });

  it('says live updates are unavailable when GET /posts answers but no stream ever comes, and refreshes steadily', async () => {
    const fetch = stubFetch(() => new Response(JSON.stringify(snapshot)));
    // A course back end answers 404 for /posts/live: the browser gives up at once.
    start({ baseDelayMs: 60000, maxDelayMs: 60000, pollMs: 2000, slowStartMs: 1e9 });
    FakeEventSource.latest().fail();
    await vi.advanceTimersByTimeAsync(0);
    expect(statuses.at(-1)).toBe('unavailable');
    expect(actions.at(-1)).toMatchObject({ type: 'snapshot', order: ['p1'] });
    const loads = fetch.mock.calls.length;

    // No stream meanwhile: the posts are loaded again on the interval.
    await vi.advanceTimersByTimeAsync(6000);
    expect(fetch.mock.calls.length).toBe(loads + 3);
    expect(statuses.at(-1)).toBe('unavailable');

    // The stream is tried again now and then; failing, it stays unavailable
    // and never goes back to "Connecting…".
    await vi.advanceTimersByTimeAsync(60000);
    FakeEventSource.latest().fail();
    await vi.advanceTimersByTimeAsync(0);
    expect(statuses.slice(statuses.indexOf('unavailable'))).not.toContain('connecting');

    // A stream that works makes it live, and the polling stops.
    await vi.advanceTimersByTimeAsync(60000);
    FakeEventSource.latest().send('snapshot', snapshot);
    expect(statuses.at(-1)).toBe('live');
    const before = fetch.mock.calls.length;
    await vi.advanceTimersByTimeAsync(10000);
    expect(fetch.mock.calls.length).toBe(before);
  });

  it('says offline when the server cannot be reached at all', async () => {
    stubFetch(() => {
      throw new TypeError('Failed to fetch');
    });
    start();
    FakeEventSource.latest().fail();
    await vi.advanceTimersByTimeAsync(0);
    expect(statuses.at(-1)).toBe('offline');
  });

  it('loads GET /posts if no snapshot comes in time', async () => {
    const fetch = stubFetch(() => new Response(JSON.stringify(snapshot)));
    start({ slowStartMs: 500 });
    await vi.advanceTimersByTimeAsync(499);
    expect(fetch).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1);
    expect(fetch).toHaveBeenCalledTimes(1);
    expect(actions.at(-1)).toMatchObject({ type: 'snapshot', order: ['p1'] });
  });

  it('does not overwrite a live snapshot with a slower GET /posts', async () => {
    let answer!: (r: Response) => void;
    stubFetch(() => new Promise<Response>((resolve) => (answer = resolve)));
    start({ slowStartMs: 10 });
    await vi.advanceTimersByTimeAsync(10);
    FakeEventSource.latest().send('snapshot', { fresh: { id: 'fresh', title: 'F', comments: [] } });
    answer(new Response('{}'));
    await vi.advanceTimersByTimeAsync(0);
    expect(actions).toHaveLength(1);
    expect(actions[0]).toMatchObject({ order: ['fresh'] });
  });

  it('closes an open stream when stopped', () => {
    start();
    const es = FakeEventSource.latest();
    es.open();
    stop?.();
    stop = undefined;
    expect(es.readyState).toBe(FakeEventSource.CLOSED);
  });

  it('stops retrying when stopped', async () => {
    stubFetch(() => new Response('{}'));
    start({ baseDelayMs: 10 });
    const es = FakeEventSource.latest();
    es.fail();
    stop?.();
    stop = undefined;
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeEventSource.instances).toHaveLength(1);
  });
});
