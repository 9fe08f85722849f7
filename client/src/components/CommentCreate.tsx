import { createComment, type Comment } from '../api';
import { TextForm } from './TextForm';

export interface CommentCreateProps {
  postId: string;
  postTitle: string;
  onCreated: (postId: string, comments: Comment[]) => void;
  submit?: (postId: string, content: string) => Promise<Comment[]>;
}

/** The course's "New Comment" form on each post card. */
export function CommentCreate({ postId, postTitle, onCreated, submit = createComment }: CommentCreateProps) {
  return (
    <TextForm
      className="comment-create"
      label="New Comment"
      field="content"
      formLabel={`New comment on ${postTitle}`}
      submit={(content) => submit(postId, content)}
      onSuccess={(comments) => onCreated(postId, comments)}
      emptyMessage="Write a comment first."
      placeholder="Say something nice"
    />
  );
}
