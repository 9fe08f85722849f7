import { render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import { LiveIndicator } from './LiveIndicator';
import { PostCard } from './PostCard';
import { PostList } from './PostList';

const post = { id: 'p1', title: 'My post', comments: [{ id: 'c1', content: 'first!', status: 'approved' }] };

describe('PostCard', () => {
  it('shows the title, the comments and a New Comment form', () => {
    render(<PostCard post={post} onCommentsChanged={() => {}} />);
    const card = screen.getByRole('article', { name: 'My post' });
    expect(within(card).getByText('first!')).toBeInTheDocument();
    expect(within(card).getByText('1 comment')).toBeInTheDocument();
    expect(within(card).getByLabelText('New Comment')).toBeInTheDocument();
  });

  it('sends a comment for its post and hands on the returned list', async () => {
    const user = userEvent.setup();
    const comments = [...post.comments, { id: 'c2', content: 'second', status: 'pending' }];
    const submit = vi.fn(() => Promise.resolve(comments));
    const changed = vi.fn();
    render(<PostCard post={post} onCommentsChanged={changed} submitComment={submit} />);
    await user.type(screen.getByLabelText('New Comment'), 'second');
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    expect(submit).toHaveBeenCalledWith('p1', 'second');
    expect(changed).toHaveBeenCalledWith('p1', comments);
    expect(screen.getByLabelText('New Comment')).toHaveValue('');
  });
});

describe('PostList', () => {
  it('says it is loading, then that there are no posts', () => {
    const { rerender } = render(<PostList posts={[]} loaded={false} onCommentsChanged={() => {}} />);
    expect(screen.getByText('Loading posts…')).toBeInTheDocument();
    rerender(<PostList posts={[]} loaded onCommentsChanged={() => {}} />);
    expect(screen.getByText('No posts yet. Create the first one above.')).toBeInTheDocument();
  });

  it('shows a card per post in order', () => {
    render(<PostList posts={[post, { id: 'p2', title: 'Second', comments: [] }]} loaded onCommentsChanged={() => {}} />);
    expect(screen.getAllByRole('article').map((a) => a.getAttribute('data-post-id'))).toEqual(['p1', 'p2']);
  });
});

describe('LiveIndicator', () => {
  it.each([
    ['live', 'Live'],
    ['connecting', 'Connecting…'],
    ['reconnecting', 'Reconnecting…'],
    ['offline', 'Cannot reach the server. Retrying…'],
    ['unavailable', 'Live updates unavailable'],
  ] as const)('shows %s', (status, text) => {
    render(<LiveIndicator status={status} />);
    expect(screen.getByRole('status')).toHaveTextContent(text);
  });
});
