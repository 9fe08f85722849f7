// Live updates: an EventSource on /posts/live (snapshot, then post and comment events).
// The browser's EventSource reconnects by itself after a dropped connection;
// when it gives up (an HTTP error, e.g. the gateway answering 502 while query
// restarts, or a server without /posts/live) we reconnect ourselves with
// back-off, and load GET /posts meanwhile so the page is never empty. A
// server that answers GET /posts but never gave a stream (a course back end
// has no /posts/live) is "live updates unavailable": the page then refreshes
// from GET /posts on a steady interval, and still tries the stream now and then.

import { useEffect, useState } from 'react';
import { ApiError, fetchPostsText } from './api';
import { parseSnapshot, toLiveComment, toPost, type Action } from './state';

export type LiveStatus = 'connecting' | 'live' | 'reconnecting' | 'unavailable' | 'offline';

export const LIVE_URL = '/posts/live';

export interface LiveOptions {
  /** First delay before a manual reconnect, doubled each time up to maxDelayMs. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Load GET /posts if no snapshot has arrived after this long. */
  slowStartMs?: number;
  /** Without a stream, refresh from GET /posts this often. */
  pollMs?: number;
}

export function connectLive(
  dispatch: (action: Action) => void,
  onStatus: (status: LiveStatus) => void,
  { baseDelayMs = 1000, maxDelayMs = 15000, slowStartMs = 3000, pollMs = 5000 }: LiveOptions = {},
): () => void {
  let source: EventSource | null = null;
  let timer: ReturnType<typeof setTimeout> | null = null;
  let attempt = 0;
  let stopped = false;
  let everConnected = false;
  let liveNow = false;
  let poll: ReturnType<typeof setInterval> | null = null;

  const stopPolling = () => {
    if (poll) clearInterval(poll);
    poll = null;
  };

  const applySnapshotText = (text: string) => {
    try {
      dispatch(parseSnapshot(text));
    } catch {
      // A garbled snapshot is ignored; the next one replaces it.
    }
  };

  const fallbackLoad = async () => {
    try {
      const text = await fetchPostsText();
      // A live snapshot that came meanwhile is newer: keep it.
      if (!stopped && !liveNow) applySnapshotText(text);
      // The server answers but has never streamed: it has no live updates.
      if (!stopped && !everConnected && !liveNow) {
        onStatus('unavailable');
        poll ??= setInterval(() => void fallbackLoad(), pollMs);
      }
      return true;
    } catch (err) {
      if (!stopped && err instanceof ApiError && err.kind === 'unreachable') onStatus('offline');
      return false;
    }
  };

  const open = () => {
    if (stopped) return;
    const es = new EventSource(LIVE_URL);
    source = es;

    es.addEventListener('open', () => {
      attempt = 0;
    });
    es.addEventListener('snapshot', (event) => {
      everConnected = true;
      liveNow = true;
      attempt = 0;
      stopPolling();
      applySnapshotText((event as MessageEvent<string>).data);
      onStatus('live');
    });
    es.addEventListener('post', (event) => {
      try {
        const post = toPost(JSON.parse((event as MessageEvent<string>).data));
        if (post) dispatch({ type: 'post', post });
      } catch {
        // Ignore a garbled event.
      }
    });
    es.addEventListener('comment', (event) => {
      try {
        const live = toLiveComment(JSON.parse((event as MessageEvent<string>).data));
        if (live) dispatch({ type: 'comment', ...live });
      } catch {
        // Ignore a garbled event.
      }
    });
    es.addEventListener('error', () => {
      if (stopped) return;
      liveNow = false;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up on this stream: retry ourselves.
        es.close();
        source = null;
        onStatus(everConnected ? 'reconnecting' : poll ? 'unavailable' : 'connecting');
        void fallbackLoad();
        const delay = Math.min(maxDelayMs, baseDelayMs * 2 ** attempt);
        attempt += 1;
        timer = setTimeout(open, delay);
      } else {
        // Still CONNECTING: the browser retries on its own.
        onStatus(everConnected ? 'reconnecting' : poll ? 'unavailable' : 'connecting');
      }
    });
  };

  open();

  // If no snapshot has come after a while (a proxy buffering the stream, a
  // server without /posts/live), load the posts the plain way meanwhile.
  const slowStart = setTimeout(() => {
    if (!everConnected && !stopped) void fallbackLoad();
  }, slowStartMs);

  return () => {
    stopped = true;
    clearTimeout(slowStart);
    if (timer) clearTimeout(timer);
    stopPolling();
    source?.close();
  };
}

/** Keeps `dispatch` fed with live data for as long as the component is mounted. */
export function useLiveUpdates(dispatch: (action: Action) => void, options?: LiveOptions): LiveStatus {
  const [status, setStatus] = useState<LiveStatus>('connecting');
  const base = options?.baseDelayMs;
  const max = options?.maxDelayMs;
  const slow = options?.slowStartMs;
  const poll = options?.pollMs;
  useEffect(
    () => connectLive(dispatch, setStatus, { baseDelayMs: base, maxDelayMs: max, slowStartMs: slow, pollMs: poll }),
    [dispatch, base, max, slow, poll],
  );
  return status;
}
