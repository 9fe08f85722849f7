import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import { ApiError, UNREACHABLE_MESSAGE } from '../api';
import { PostCreate } from './PostCreate';

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe('PostCreate', () => {
  it('has the course heading, label and button', () => {
    render(<PostCreate onCreated={() => {}} />);
    expect(screen.getByRole('heading', { name: 'Create Post' })).toBeInTheDocument();
    expect(screen.getByLabelText('Title')).toBeInTheDocument();
    expect(screen.getByRole('button', { name: 'Submit' })).toBeEnabled();
  });

  it('disables Submit while sending, then clears the input and reports the post', async () => {
    const user = userEvent.setup();
    const pending = deferred<{ id: string; title: string }>();
    const submit = vi.fn(() => pending.promise);
    const onCreated = vi.fn();
    render(<PostCreate onCreated={onCreated} submit={submit} />);
    await user.type(screen.getByLabelText('Title'), 'Hello');
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    expect(submit).toHaveBeenCalledWith('Hello');
    expect(screen.getByRole('button', { name: 'Submit' })).toBeDisabled();
    pending.resolve({ id: 'p1', title: 'Hello' });
    // The button exists while disabled, so wait for the state, not the element.
    await waitFor(() => expect(screen.getByRole('button', { name: 'Submit' })).toBeEnabled());
    expect(onCreated).toHaveBeenCalledWith({ id: 'p1', title: 'Hello' });
    expect(screen.getByLabelText('Title')).toHaveValue('');
  });

  it('submits with the keyboard', async () => {
    const user = userEvent.setup();
    const submit = vi.fn((title: string) => Promise.resolve({ id: 'k', title }));
    render(<PostCreate onCreated={() => {}} submit={submit} />);
    await user.type(screen.getByLabelText('Title'), 'Typed{Enter}');
    expect(submit).toHaveBeenCalledWith('Typed');
  });

  it('shows the server’s field error next to the field and keeps the input', async () => {
    const user = userEvent.setup();
    const refused = new ApiError('invalid', 'title must be at most 200 characters', 400, [
      { message: 'title must be at most 200 characters', field: 'title' },
    ]);
    const submit = vi.fn(() => Promise.reject(refused));
    render(<PostCreate onCreated={() => {}} submit={submit} />);
    const input = screen.getByLabelText('Title');
    await user.type(input, 'x');
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    const alert = await screen.findByRole('alert');
    expect(alert).toHaveTextContent('title must be at most 200 characters');
    expect(input).toHaveAttribute('aria-invalid', 'true');
    expect(input).toHaveAttribute('aria-describedby', alert.id);
    expect(input).toHaveValue('x');
  });

  it('says clearly when the server cannot be reached', async () => {
    const user = userEvent.setup();
    const submit = vi.fn(() => Promise.reject(new ApiError('unreachable', UNREACHABLE_MESSAGE)));
    render(<PostCreate onCreated={() => {}} submit={submit} />);
    await user.type(screen.getByLabelText('Title'), 'x');
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    expect(await screen.findByRole('alert')).toHaveTextContent(UNREACHABLE_MESSAGE);
  });

  it('does not send a blank title', async () => {
    const user = userEvent.setup();
    const submit = vi.fn();
    render(<PostCreate onCreated={() => {}} submit={submit} />);
    await user.type(screen.getByLabelText('Title'), '   ');
    await user.click(screen.getByRole('button', { name: 'Submit' }));
    expect(submit).not.toHaveBeenCalled();
    expect(screen.getByRole('alert')).toHaveTextContent('Enter a title first.');
  });
});
