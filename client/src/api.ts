// The HTTP API the client talks to. Only same-origin relative URLs, so the
// page works behind the gateway, the Ingress, or any host serving both.

export type CommentStatus = 'pending' | 'approved' | 'rejected';

export interface Comment {
  id: string;
  content: string;
  status: CommentStatus | string;
}

export interface Post {
  id: string;
  title: string;
  comments: Comment[];
}

export interface FieldError {
  message: string;
  field?: string;
}

/** Why a request failed, in words the page can show next to the right field. */
export class ApiError extends Error {
  /**
   * - `invalid`: the server refused the input (4xx with `{"errors":[...]}`)
   * - `unreachable`: no answer at all (network down, server stopped)
   * - `server`: an answer we cannot use (5xx, not JSON, ...)
   */
  readonly kind: 'invalid' | 'unreachable' | 'server';
  readonly status: number;
  readonly errors: FieldError[];

  constructor(kind: ApiError['kind'], message: string, status = 0, errors: FieldError[] = []) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.errors = errors;
  }

  /** Messages for one field; `undefined` collects those naming no known field. */
  messagesFor(field: string): string[] {
    return this.errors.filter((e) => e.field === field).map((e) => e.message);
  }

  messagesNotFor(fields: string[]): string[] {
    const rest = this.errors.filter((e) => !e.field || !fields.includes(e.field)).map((e) => e.message);
    if (this.errors.length === 0) return [this.message];
    return rest;
  }
}

export const UNREACHABLE_MESSAGE = 'Cannot reach the server. Check your connection and try again.';

function isFieldErrorList(value: unknown): value is { errors: FieldError[] } {
  if (typeof value !== 'object' || value === null) return false;
  const errors = (value as { errors?: unknown }).errors;
  return (
    Array.isArray(errors) &&
    errors.every((e) => typeof e === 'object' && e !== null && typeof (e as FieldError).message === 'string')
  );
}

async function request<T>(path: string, init?: RequestInit): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      ...init,
      headers: { Accept: 'application/json', ...(init?.body ? { 'Content-Type': 'application/json' } : {}) },
    });
  } catch {
    throw new ApiError('unreachable', UNREACHABLE_MESSAGE);
  }

  let body: unknown = undefined;
  const text = await response.text().catch(() => '');
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
  }

  if (response.ok) {
    if (body === undefined) {
      throw new ApiError('server', `The server sent an unexpected answer (${response.status}).`, response.status);
    }
    return body as T;
  }

  if (response.status >= 400 && response.status < 500 && isFieldErrorList(body)) {
    const errors = body.errors.map((e) => ({ message: e.message, field: typeof e.field === 'string' ? e.field : undefined }));
    throw new ApiError('invalid', errors.map((e) => e.message).join('; ') || 'The request was refused.', response.status, errors);
  }
  if (response.status === 502 || response.status === 503 || response.status === 504) {
    throw new ApiError('unreachable', 'The service is not available right now. Try again in a moment.', response.status);
  }
  if (response.status >= 400 && response.status < 500) {
    throw new ApiError('invalid', `The request was refused (${response.status}).`, response.status);
  }
  throw new ApiError('server', `The server had a problem (${response.status}). Try again.`, response.status);
}

/** `POST /posts/create` → 201 `{id,title}` */
export async function createPost(title: string): Promise<{ id: string; title: string }> {
  return request('/posts/create', { method: 'POST', body: JSON.stringify({ title }) });
}

/** `POST /posts/:id/comments` → 201 with every comment of that post. */
export async function createComment(postId: string, content: string): Promise<Comment[]> {
  return request(`/posts/${encodeURIComponent(postId)}/comments`, {
    method: 'POST',
    body: JSON.stringify({ content }),
  });
}

/** `GET /posts` as raw text, so the order of the keys (creation order) is kept. */
export async function fetchPostsText(): Promise<string> {
  let response: Response;
  try {
    response = await fetch('/posts', { headers: { Accept: 'application/json' } });
  } catch {
    throw new ApiError('unreachable', UNREACHABLE_MESSAGE);
  }
  if (response.status === 502 || response.status === 503 || response.status === 504) {
    throw new ApiError('unreachable', 'The service is not available right now.', response.status);
  }
  if (!response.ok) {
    throw new ApiError('server', `The server had a problem (${response.status}).`, response.status);
  }
  return response.text();
}
