// The page's copy of the posts, and how server data and our own writes merge
// into it. Pure functions, so they are easy to test.

import type { Comment, Post } from './api';

export interface PostsState {
  /** Post ids in display order (creation order; new posts last). */
  order: string[];
  posts: Record<string, Post>;
  /**
   * Ids (of posts and comments) we created ourselves and have not yet seen in
   * the query service's data. They survive a snapshot that does not have them
   * yet, so nothing the user just made flickers away.
   */
  unconfirmed: Record<string, true>;
  /** False until the first snapshot (or GET /posts) has been applied. */
  loaded: boolean;
}

export const initialState: PostsState = { order: [], posts: {}, unconfirmed: {}, loaded: false };

export type Action =
  | { type: 'snapshot'; order: string[]; posts: Record<string, Post> }
  | { type: 'post'; post: Post }
  | { type: 'comment'; postId: string; comment: Comment }
  | { type: 'created'; post: { id: string; title: string } }
  | { type: 'comments'; postId: string; comments: Comment[] };

/**
 * The keys of the top-level JSON object in `text`, in the order they appear.
 * `JSON.parse` moves integer-like keys (a course id such as "12345678") to the
 * front, which would scramble the creation order the server sends.
 */
export function orderedKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let i = 0;
  let expectKey = false;
  while (i < text.length) {
    const ch = text[i];
    if (ch === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        keys.push(JSON.parse(text.slice(i, j + 1)) as string);
        expectKey = false;
      }
      i = j + 1;
      continue;
    }
    if (ch === '{' || ch === '[') {
      depth += 1;
      if (depth === 1 && ch === '{') expectKey = true;
    } else if (ch === '}' || ch === ']') {
      depth -= 1;
    } else if (ch === ',' && depth === 1) {
      expectKey = true;
    }
    i += 1;
  }
  return keys;
}

function toComment(raw: unknown): Comment | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const c = raw as Record<string, unknown>;
  if (typeof c.id !== 'string') return null;
  return {
    id: c.id,
    content: typeof c.content === 'string' ? c.content : '',
    status: typeof c.status === 'string' ? c.status : 'pending',
  };
}

/** A live `comment` event's data (`{id, postId, content, status}`), checked. */
export function toLiveComment(raw: unknown): { postId: string; comment: Comment } | null {
  const comment = toComment(raw);
  const postId = (raw as Record<string, unknown> | null)?.postId;
  return comment && typeof postId === 'string' ? { postId, comment } : null;
}

/** A post object from the server, checked; `null` when it is unusable. */
export function toPost(raw: unknown): Post | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const p = raw as Record<string, unknown>;
  if (typeof p.id !== 'string') return null;
  const comments = Array.isArray(p.comments) ? p.comments.map(toComment).filter((c): c is Comment => c !== null) : [];
  return { id: p.id, title: typeof p.title === 'string' ? p.title : '', comments };
}

export function toComments(raw: unknown): Comment[] {
  return Array.isArray(raw) ? raw.map(toComment).filter((c): c is Comment => c !== null) : [];
}

/** Parses the `GET /posts` (or `snapshot` event) body into a snapshot action. */
export function parseSnapshot(text: string): Extract<Action, { type: 'snapshot' }> {
  const data: unknown = JSON.parse(text);
  const posts: Record<string, Post> = {};
  const order: string[] = [];
  if (typeof data === 'object' && data !== null && !Array.isArray(data)) {
    const map = data as Record<string, unknown>;
    for (const key of orderedKeys(text)) {
      if (key in posts) continue;
      const post = toPost(map[key]);
      if (post) {
        posts[post.id] = post;
        order.push(post.id);
      }
    }
  }
  return { type: 'snapshot', order, posts };
}

const isFinal = (status: string) => status !== 'pending';

/** An older copy: it would move `mine` back from approved/rejected to pending. */
const isOlderThan = (incoming: Comment, mine: Comment) => isFinal(mine.status) && !isFinal(incoming.status);

/**
 * The server's comments, with two safeguards: a status never goes back from
 * approved/rejected to pending (an older copy arriving late), and comments we
 * created that the server does not list yet are kept.
 */
export function mergeComments(local: Comment[], incoming: Comment[], unconfirmed: Record<string, true>): Comment[] {
  const localById = new Map(local.map((c) => [c.id, c]));
  const incomingIds = new Set(incoming.map((c) => c.id));
  const merged = incoming.map((c) => {
    const mine = localById.get(c.id);
    return mine && isOlderThan(c, mine) ? mine : c;
  });
  for (const c of local) {
    if (!incomingIds.has(c.id) && unconfirmed[c.id]) merged.push(c);
  }
  return merged;
}

function withoutIds(unconfirmed: Record<string, true>, ids: string[]): Record<string, true> {
  if (!ids.some((id) => unconfirmed[id])) return unconfirmed;
  const next = { ...unconfirmed };
  for (const id of ids) delete next[id];
  return next;
}

function confirmedIds(post: Post): string[] {
  return [post.id, ...post.comments.map((c) => c.id)];
}

export function reducer(state: PostsState, action: Action): PostsState {
  switch (action.type) {
    case 'snapshot': {
      const unconfirmed = withoutIds(state.unconfirmed, Object.values(action.posts).flatMap(confirmedIds));
      const posts: Record<string, Post> = {};
      for (const id of action.order) {
        const local = state.posts[id];
        const incoming = action.posts[id];
        posts[id] = local ? { ...incoming, comments: mergeComments(local.comments, incoming.comments, unconfirmed) } : incoming;
      }
      const order = [...action.order];
      for (const id of state.order) {
        if (!(id in posts) && unconfirmed[id]) {
          posts[id] = state.posts[id];
          order.push(id);
        }
      }
      return { order, posts, unconfirmed, loaded: true };
    }
    case 'post': {
      const incoming = action.post;
      const unconfirmed = withoutIds(state.unconfirmed, confirmedIds(incoming));
      const local = state.posts[incoming.id];
      const post = local ? { ...incoming, comments: mergeComments(local.comments, incoming.comments, unconfirmed) } : incoming;
      return {
        ...state,
        order: local ? state.order : [...state.order, incoming.id],
        posts: { ...state.posts, [incoming.id]: post },
        unconfirmed,
      };
    }
    case 'comment': {
      const local = state.posts[action.postId];
      // A post not here yet: its own `post` event brings the comment along.
      if (!local) return state;
      const incoming = action.comment;
      const unconfirmed = withoutIds(state.unconfirmed, [incoming.id]);
      const at = local.comments.findIndex((c) => c.id === incoming.id);
      let comments: Comment[];
      if (at < 0) {
        comments = [...local.comments, incoming];
      } else {
        if (isOlderThan(incoming, local.comments[at])) return state;
        comments = local.comments.map((c, i) => (i === at ? incoming : c));
      }
      return { ...state, posts: { ...state.posts, [local.id]: { ...local, comments } }, unconfirmed };
    }
    case 'created': {
      if (state.posts[action.post.id]) return state;
      return {
        ...state,
        order: [...state.order, action.post.id],
        posts: { ...state.posts, [action.post.id]: { id: action.post.id, title: action.post.title, comments: [] } },
        unconfirmed: { ...state.unconfirmed, [action.post.id]: true },
      };
    }
    case 'comments': {
      const local = state.posts[action.postId];
      if (!local) return state;
      const known = new Set(local.comments.map((c) => c.id));
      const unconfirmed = { ...state.unconfirmed };
      for (const c of action.comments) if (!known.has(c.id)) unconfirmed[c.id] = true;
      // The comments service's list is the newest word on which comments exist.
      const comments = mergeComments(local.comments, action.comments, unconfirmed);
      return { ...state, posts: { ...state.posts, [local.id]: { ...local, comments } }, unconfirmed };
    }
  }
}

export function postsInOrder(state: PostsState): Post[] {
  return state.order.map((id) => state.posts[id]).filter((p): p is Post => p !== undefined);
}
