import { render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import { ApiError, UNREACHABLE_MESSAGE } from '../api';
import { CommentCreate } from './CommentCreate';

describe('CommentCreate', () => {
  it('is a labelled form named after its post', () => {
    render(<CommentCreate postId="p1" postTitle="Hello" onCreated={() => {}} />);
    expect(screen.getByRole('form', { name: 'New comment on Hello' })).toBeInTheDocument();
    expect(screen.getByLabelText('New Comment')).toBeInTheDocument();
    expect(screen.getByRole('button', { name: 'Submit' })).toBeEnabled();
  });

  it('shows the server’s content error next to the field', async () => {
    const user = userEvent.setup();
    const refused = new ApiError('invalid', 'content must be at most 2000 characters', 400, [
      { message: 'content must be at most 2000 characters', field: 'content' },
    ]);
    const submit = vi.fn(() => Promise.reject(refused));
    const onCreated = vi.fn();
    render(<CommentCreate postId="p1" postTitle="Hello" onCreated={onCreated} submit={submit} />);
    const input = screen.getByLabelText('New Comment');
    await user.type(input, 'long');
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    const alert = await screen.findByRole('alert');
    expect(alert).toHaveTextContent('content must be at most 2000 characters');
    expect(alert).toHaveClass('field-error');
    expect(input).toHaveAttribute('aria-describedby', alert.id);
    expect(input).toHaveValue('long');
    expect(onCreated).not.toHaveBeenCalled();
  });

  it('shows an error about no field (an unknown post) under the form', async () => {
    const user = userEvent.setup();
    const submit = vi.fn(() => Promise.reject(new ApiError('invalid', 'post not found', 404, [{ message: 'post not found' }])));
    render(<CommentCreate postId="gone" postTitle="Gone" onCreated={() => {}} submit={submit} />);
    const input = screen.getByLabelText('New Comment');
    await user.type(input, 'hello');
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    const alert = await screen.findByRole('alert');
    expect(alert).toHaveTextContent('post not found');
    expect(alert).toHaveClass('form-error');
    expect(input).not.toHaveAttribute('aria-invalid');
  });

  it('says when the server cannot be reached, and recovers on the next try', async () => {
    const user = userEvent.setup();
    const submit = vi
      .fn()
      .mockRejectedValueOnce(new ApiError('unreachable', UNREACHABLE_MESSAGE))
      .mockResolvedValueOnce([{ id: 'c1', content: 'hi', status: 'pending' }]);
    const onCreated = vi.fn();
    render(<CommentCreate postId="p1" postTitle="Hello" onCreated={onCreated} submit={submit} />);
    await user.type(screen.getByLabelText('New Comment'), 'hi');
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    expect(await screen.findByRole('alert')).toHaveTextContent(UNREACHABLE_MESSAGE);
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    expect(onCreated).toHaveBeenCalledWith('p1', [{ id: 'c1', content: 'hi', status: 'pending' }]);
    expect(screen.queryByRole('alert')).toBeNull();
    expect(screen.getByLabelText('New Comment')).toHaveValue('');
  });

  it('clears a field error as soon as the user types again', async () => {
    const user = userEvent.setup();
    const submit = vi.fn();
    render(<CommentCreate postId="p1" postTitle="Hello" onCreated={() => {}} submit={submit} />);
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    expect(screen.getByRole('alert')).toHaveTextContent('Write a comment first.');
    expect(submit).not.toHaveBeenCalled();
    await user.type(screen.getByLabelText('New Comment'), 'a');
    expect(screen.queryByRole('alert')).toBeNull();
  });
});
