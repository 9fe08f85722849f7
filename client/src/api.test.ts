import { afterEach, describe, expect, it } from 'vitest';
import { vi } from 'vitest';
import { ApiError, UNREACHABLE_MESSAGE, createComment, createPost, fetchPostsText } from './api';
import { jsonResponse, stubFetch } from './test/fakes';

afterEach(() => {
  vi.unstubAllGlobals();
});

async function caught(promise: Promise<unknown>): Promise<ApiError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(ApiError);
    return err as ApiError;
  }
  throw new Error('expected the request to fail');
}

/** The JSON a stubbed fetch was sent. */
function sentJson(init?: RequestInit): unknown {
  const body = init?.body;
  if (typeof body !== 'string') throw new Error('expected a string body');
  return JSON.parse(body);
}

describe('createPost', () => {
  it('POSTs {title} as JSON to the same-origin /posts/create', async () => {
    const fetch = stubFetch(() => jsonResponse(201, { id: 'p1', title: 'Hi' }));
    await expect(createPost('Hi')).resolves.toEqual({ id: 'p1', title: 'Hi' });
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe('/posts/create');
    expect(init?.method).toBe('POST');
    expect(sentJson(init)).toEqual({ title: 'Hi' });
    expect((init?.headers as Record<string, string>)['Content-Type']).toBe('application/json');
  });

  it('turns a 4xx error list into field messages', async () => {
    stubFetch(() =>
      jsonResponse(400, {
        errors: [{ message: 'title must not be empty', field: 'title' }, { message: 'something else' }],
      }),
    );
    const err = await caught(createPost(''));
    expect(err.kind).toBe('invalid');
    expect(err.status).toBe(400);
    expect(err.messagesFor('title')).toEqual(['title must not be empty']);
    expect(err.messagesNotFor(['title'])).toEqual(['something else']);
  });

  it('says the server is unreachable when fetch itself fails', async () => {
    stubFetch(() => {
      throw new TypeError('Failed to fetch');
    });
    const err = await caught(createPost('x'));
    expect(err.kind).toBe('unreachable');
    expect(err.message).toBe(UNREACHABLE_MESSAGE);
  });

  it('treats a gateway 502 as unreachable, not as bad input', async () => {
    stubFetch(() => new Response('<html>bad gateway</html>', { status: 502 }));
    const err = await caught(createPost('x'));
    expect(err.kind).toBe('unreachable');
    expect(err.messagesNotFor(['title'])).toEqual([err.message]);
  });

  it('reports a 500 or a non-JSON answer as a server problem', async () => {
    stubFetch(() => new Response('oops', { status: 500 }));
    expect((await caught(createPost('x'))).kind).toBe('server');
    stubFetch(() => new Response('<html></html>', { status: 201 }));
    expect((await caught(createPost('x'))).kind).toBe('server');
  });

  it('reports a 4xx without an error list with its status', async () => {
    stubFetch(() => new Response('nope', { status: 415 }));
    const err = await caught(createPost('x'));
    expect(err.kind).toBe('invalid');
    expect(err.message).toContain('415');
  });
});

describe('createComment', () => {
  it('POSTs {content} to /posts/:id/comments and returns every comment', async () => {
    const comments = [{ id: 'c1', content: 'hi', status: 'pending' }];
    const fetch = stubFetch(() => jsonResponse(201, comments));
    await expect(createComment('a/b', 'hi')).resolves.toEqual(comments);
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe('/posts/a%2Fb/comments');
    expect(sentJson(init)).toEqual({ content: 'hi' });
  });
});

describe('fetchPostsText', () => {
  it('GETs /posts and returns the raw body, keys in the order sent', async () => {
    const fetch = stubFetch((url) => (url === '/posts' ? new Response('{"b":{},"1":{}}') : new Response('', { status: 404 })));
    await expect(fetchPostsText()).resolves.toBe('{"b":{},"1":{}}');
    const [, init] = fetch.mock.calls[0];
    expect(init?.method).toBeUndefined();
    expect(init?.headers).toEqual({ Accept: 'application/json' });
  });

  it('hands on a 2xx body that is not JSON for the caller to judge', async () => {
    stubFetch(() => new Response('<html></html>'));
    await expect(fetchPostsText()).resolves.toBe('<html></html>');
  });

  it('fails as unreachable when the network is down or the gateway answers 502', async () => {
    stubFetch(() => {
      throw new TypeError('Failed to fetch');
    });
    expect((await caught(fetchPostsText())).kind).toBe('unreachable');
    stubFetch(() => new Response('<html>bad gateway</html>', { status: 502 }));
    expect((await caught(fetchPostsText())).kind).toBe('unreachable');
  });

  it('reports a 500 as a server problem', async () => {
    stubFetch(() => new Response('oops', { status: 500 }));
    const err = await caught(fetchPostsText());
    expect(err.kind).toBe('server');
    expect(err.status).toBe(500);
  });
});
