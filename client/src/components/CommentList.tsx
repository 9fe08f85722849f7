import type { Comment } from '../api';

export const PENDING_TEXT = 'This comment is awaiting moderation';
export const REJECTED_TEXT = 'This comment has been rejected';

/** What a comment shows, by status (the course's texts). */
function commentText(comment: Comment): string {
  switch (comment.status) {
    case 'approved':
      return comment.content;
    case 'rejected':
      return REJECTED_TEXT;
    default:
      return PENDING_TEXT;
  }
}

export function CommentItem({ comment }: { comment: Comment }) {
  const status = comment.status === 'approved' || comment.status === 'rejected' ? comment.status : 'pending';
  // Content is rendered as text by React, never as HTML.
  return (
    <li className={`comment comment-${status}`} data-status={status} data-comment-id={comment.id}>
      {commentText(comment)}
    </li>
  );
}

export function CommentList({ comments }: { comments: Comment[] }) {
  if (comments.length === 0) {
    return <p className="empty comments-empty">No comments yet.</p>;
  }
  return (
    <ul className="comments" aria-live="polite">
      {comments.map((c) => (
        <CommentItem key={c.id} comment={c} />
      ))}
    </ul>
  );
}
