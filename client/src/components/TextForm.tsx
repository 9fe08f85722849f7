import { useId, useRef, useState, type FormEvent } from 'react';
import { ApiError } from '../api';

export interface TextFormProps<T> {
  /** The visible label of the one input ("Title", "New Comment"). */
  label: string;
  /** The field name the server uses in its errors ("title", "content"). */
  field: string;
  /** Sends the value; resolves with the server's answer. */
  submit: (value: string) => Promise<T>;
  /** Called with the answer once the server accepted the value. */
  onSuccess: (result: T) => void;
  /** Shown instead of sending when the value is blank. */
  emptyMessage: string;
  placeholder?: string;
  /** Extra accessible name context, e.g. which post a comment form belongs to. */
  formLabel?: string;
  className?: string;
}

/** A form with one labelled text input and a Submit button. */
export function TextForm<T>({
  label,
  field,
  submit,
  onSuccess,
  emptyMessage,
  placeholder,
  formLabel,
  className,
}: TextFormProps<T>) {
  const id = useId();
  const inputId = `${id}-input`;
  const fieldErrorId = `${id}-field-error`;
  const [value, setValue] = useState('');
  const [sending, setSending] = useState(false);
  const [fieldErrors, setFieldErrors] = useState<string[]>([]);
  const [formErrors, setFormErrors] = useState<string[]>([]);
  const inputRef = useRef<HTMLInputElement>(null);

  async function handleSubmit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    if (sending) return;
    if (value.trim() === '') {
      setFieldErrors([emptyMessage]);
      setFormErrors([]);
      inputRef.current?.focus();
      return;
    }
    setSending(true);
    setFieldErrors([]);
    setFormErrors([]);
    try {
      const result = await submit(value);
      setValue('');
      onSuccess(result);
    } catch (err) {
      if (err instanceof ApiError) {
        setFieldErrors(err.messagesFor(field));
        setFormErrors(err.messagesNotFor([field]));
      } else {
        setFormErrors(['Something went wrong. Try again.']);
      }
    } finally {
      setSending(false);
      inputRef.current?.focus();
    }
  }

  const invalid = fieldErrors.length > 0;
  return (
    <form
      className={className ? `text-form ${className}` : 'text-form'}
      onSubmit={(event) => void handleSubmit(event)}
      aria-label={formLabel}
      noValidate
    >
      <label htmlFor={inputId}>{label}</label>
      <div className="text-form-row">
        <input
          id={inputId}
          ref={inputRef}
          name={field}
          type="text"
          autoComplete="off"
          value={value}
          placeholder={placeholder}
          onChange={(e) => {
            setValue(e.target.value);
            if (fieldErrors.length) setFieldErrors([]);
          }}
          aria-invalid={invalid || undefined}
          aria-describedby={invalid ? fieldErrorId : undefined}
        />
        <button type="submit" disabled={sending} aria-busy={sending || undefined}>
          Submit
        </button>
      </div>
      {sending && (
        <p className="sending" role="status">
          Sending…
        </p>
      )}
      {invalid && (
        <p id={fieldErrorId} className="field-error" role="alert">
          {fieldErrors.join(' ')}
        </p>
      )}
      {formErrors.length > 0 && (
        <p className="form-error" role="alert">
          {formErrors.join(' ')}
        </p>
      )}
    </form>
  );
}
