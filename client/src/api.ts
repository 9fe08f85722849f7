// The HTTP API the client talks to. Only same-origin relative URLs, so the
// page works behind the gateway, the Ingress, or any host serving both.

export type CommentStatus = 'pending' | 'approved' | 'rejected';

export interface Comment {
  id: string;
  content: string;
  /** A `CommentStatus`, or one this page does not know (shown as pending). */
  status: string;
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

function parseJson(text: string): unknown {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** How the body of a 2xx answer becomes the result: JSON by default. */
type ReadBody<T> = (text: string, status: number) => T;

function readJson<T>(text: string, status: number): T {
  const body = parseJson(text);
  if (body === undefined) {
    throw new ApiError('server', `The server sent an unexpected answer (${status}).`, status);
  }
  return body as T;
}

/** The error for an answer that is not 2xx. */
function failure(status: number, text: string): ApiError {
  const body = parseJson(text);
  if (status >= 400 && status < 500 && isFieldErrorList(body)) {
    const errors = body.errors.map((e) => ({ message: e.message, field: typeof e.field === 'string' ? e.field : undefined }));
    return new ApiError('invalid', errors.map((e) => e.message).join('; ') || 'The request was refused.', status, errors);
  }
  if (status === 502 || status === 503 || status === 504) {
    return new ApiError('unreachable', 'The service is not available right now. Try again in a moment.', status);
  }
  if (status >= 400 && status < 500) {
    return new ApiError('invalid', `The request was refused (${status}).`, status);
  }
  return new ApiError('server', `The server had a problem (${status}). Try again.`, status);
}

/** Every call to the API goes through here: one place for headers and errors. */
async function request<T>(path: string, init?: RequestInit, read: ReadBody<T> = readJson): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      ...init,
      headers: { Accept: 'application/json', ...(init?.body ? { 'Content-Type': 'application/json' } : {}) },
    });
  } catch {
    throw new ApiError('unreachable', UNREACHABLE_MESSAGE);
  }
  const text = await response.text().catch(() => '');
  if (!response.ok) throw failure(response.status, text);
  return read(text, response.status);
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
  return request('/posts', undefined, (text) => text);
}
