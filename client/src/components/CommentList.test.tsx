import { render, screen } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import { CommentList, PENDING_TEXT, REJECTED_TEXT } from './CommentList';

describe('CommentList', () => {
  it('shows each status with the course texts', () => {
    render(
      <CommentList
        comments={[
          { id: 'a', content: 'hello there', status: 'approved' },
          { id: 'b', content: 'secret', status: 'pending' },
          { id: 'c', content: 'I like orange', status: 'rejected' },
        ]}
      />,
    );
    const items = screen.getAllByRole('listitem');
    expect(items.map((li) => li.textContent)).toEqual(['hello there', PENDING_TEXT, REJECTED_TEXT]);
    expect(PENDING_TEXT).toBe('This comment is awaiting moderation');
    expect(REJECTED_TEXT).toBe('This comment has been rejected');
    // Content of comments not approved is never shown.
    expect(screen.queryByText('secret')).toBeNull();
    expect(screen.queryByText('I like orange')).toBeNull();
  });

  it('treats an unknown status as pending', () => {
    render(<CommentList comments={[{ id: 'x', content: 'hm', status: 'weird' }]} />);
    expect(screen.getByRole('listitem')).toHaveTextContent(PENDING_TEXT);
  });

  it('renders content as text, never as HTML', () => {
    const evil = '<img src=x onerror=alert(1)>';
    const { container } = render(<CommentList comments={[{ id: 'e', content: evil, status: 'approved' }]} />);
    expect(screen.getByRole('listitem')).toHaveTextContent(evil);
    expect(container.querySelector('img')).toBeNull();
  });

  it('has an empty state', () => {
    render(<CommentList comments={[]} />);
    expect(screen.getByText('No comments yet.')).toBeInTheDocument();
  });
});
