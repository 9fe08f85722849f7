import { act, render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { App } from './App';
import { FakeEventSource, installFakeEventSource, jsonResponse, stubFetch } from './test/fakes';

beforeEach(() => {
  installFakeEventSource();
});

afterEach(() => {
  vi.unstubAllGlobals();
});

const liveOptions = { slowStartMs: 60_000 };

function live() {
  return FakeEventSource.latest();
}

describe('App', () => {
  it('shows loading, then the empty state from an empty snapshot', () => {
    stubFetch(() => jsonResponse(404, {}));
    render(<App liveOptions={liveOptions} />);
    expect(screen.getByText('Loading posts…')).toBeInTheDocument();
    expect(screen.getByText('Connecting…')).toBeInTheDocument();
    act(() => live().send('snapshot', {}));
    expect(screen.getByText('No posts yet. Create the first one above.')).toBeInTheDocument();
    expect(screen.getByText('Live')).toBeInTheDocument();
  });

  it('shows a new post at once from the 201 answer, and keeps one copy when it arrives live', async () => {
    const user = userEvent.setup();
    stubFetch((url) => (url === '/posts/create' ? jsonResponse(201, { id: 'n1', title: 'Fresh' }) : jsonResponse(404, {})));
    render(<App liveOptions={liveOptions} />);
    act(() => live().send('snapshot', {}));
    await user.type(screen.getByLabelText('Title'), 'Fresh');
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    expect(await screen.findByRole('article', { name: 'Fresh' })).toBeInTheDocument();
    // A snapshot from before the post reached query does not hide it.
    act(() => live().send('snapshot', {}));
    expect(screen.getByRole('article', { name: 'Fresh' })).toBeInTheDocument();
    act(() => live().send('post', { id: 'n1', title: 'Fresh', comments: [] }));
    expect(screen.getAllByRole('article')).toHaveLength(1);
  });

  it('applies the comment list a comment POST returns, then live status changes', async () => {
    const user = userEvent.setup();
    stubFetch((url, init) => {
      if (url === '/posts/p1/comments' && init?.method === 'POST') {
        return jsonResponse(201, [
          { id: 'c1', content: 'old', status: 'approved' },
          { id: 'c2', content: 'I like orange', status: 'pending' },
        ]);
      }
      return jsonResponse(404, {});
    });
    render(<App liveOptions={liveOptions} />);
    act(() =>
      live().send('snapshot', { p1: { id: 'p1', title: 'Post', comments: [{ id: 'c1', content: 'old', status: 'approved' }] } }),
    );
    const card = screen.getByRole('article', { name: 'Post' });
    await user.type(within(card).getByLabelText('New Comment'), 'I like orange');
    await user.click(within(card).getByRole('button', { name: 'Submit' }));
    expect(await within(card).findByText('This comment is awaiting moderation')).toBeInTheDocument();
    expect(within(card).getByText('old')).toBeInTheDocument();
    act(() =>
      live().send('post', {
        id: 'p1',
        title: 'Post',
        comments: [
          { id: 'c1', content: 'old', status: 'approved' },
          { id: 'c2', content: 'I like orange', status: 'rejected' },
        ],
      }),
    );
    expect(within(card).getByText('This comment has been rejected')).toBeInTheDocument();
    expect(within(card).queryByText('This comment is awaiting moderation')).toBeNull();
  });

  it('shows posts made elsewhere live, and a reconnecting state while the stream is down', () => {
    stubFetch(() => jsonResponse(404, {}));
    render(<App liveOptions={liveOptions} />);
    act(() => live().send('snapshot', { a: { id: 'a', title: 'First', comments: [] } }));
    act(() => live().send('post', { id: 'b', title: 'From another tab', comments: [] }));
    expect(screen.getAllByRole('article').map((a) => a.getAttribute('data-post-id'))).toEqual(['a', 'b']);
    act(() => live().drop());
    expect(screen.getByText('Reconnecting…')).toBeInTheDocument();
    // Posts stay on screen while reconnecting.
    expect(screen.getAllByRole('article')).toHaveLength(2);
    act(() =>
      live().send('snapshot', {
        a: { id: 'a', title: 'First', comments: [] },
        b: { id: 'b', title: 'From another tab', comments: [] },
        c: { id: 'c', title: 'Missed while away', comments: [] },
      }),
    );
    expect(screen.getByText('Live')).toBeInTheDocument();
    expect(screen.getByRole('article', { name: 'Missed while away' })).toBeInTheDocument();
  });

  it('renders user content as text only', () => {
    stubFetch(() => jsonResponse(404, {}));
    const evil = '<img src=x onerror=alert(1)>';
    const { container } = render(<App liveOptions={liveOptions} />);
    act(() =>
      live().send('snapshot', { x: { id: 'x', title: evil, comments: [{ id: 'c', content: evil, status: 'approved' }] } }),
    );
    expect(screen.getByRole('heading', { name: evil })).toBeInTheDocument();
    expect(screen.getByRole('listitem')).toHaveTextContent(evil);
    expect(container.querySelector('img')).toBeNull();
  });
});
