import { createPost } from '../api';
import { TextForm } from './TextForm';

export interface PostCreateProps {
  onCreated: (post: { id: string; title: string }) => void;
  submit?: (title: string) => Promise<{ id: string; title: string }>;
}

/** The course's "Create Post" form: label "Title", a Submit button. */
export function PostCreate({ onCreated, submit = createPost }: PostCreateProps) {
  return (
    <section className="panel create-post" aria-labelledby="create-post-heading">
      <h1 id="create-post-heading">Create Post</h1>
      <TextForm
        label="Title"
        field="title"
        submit={submit}
        onSuccess={onCreated}
        emptyMessage="Enter a title first."
        placeholder="What is your post about?"
      />
    </section>
  );
}
