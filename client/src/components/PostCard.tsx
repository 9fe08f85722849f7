import type { Comment, Post } from '../api';
import { CommentCreate, type CommentCreateProps } from './CommentCreate';
import { CommentList } from './CommentList';

export interface PostCardProps {
  post: Post;
  onCommentsChanged: (postId: string, comments: Comment[]) => void;
  submitComment?: CommentCreateProps['submit'];
}

/** One post: its title, its comments and a "New Comment" form. */
export function PostCard({ post, onCommentsChanged, submitComment }: PostCardProps) {
  const headingId = `post-${post.id}-title`;
  const count = post.comments.length;
  return (
    <article className="card post-card" aria-labelledby={headingId} data-post-id={post.id}>
      <h3 id={headingId} className="post-title">
        {post.title}
      </h3>
      <p className="comment-count">{count === 1 ? '1 comment' : `${count} comments`}</p>
      <CommentList comments={post.comments} />
      <CommentCreate postId={post.id} postTitle={post.title} onCreated={onCommentsChanged} submit={submitComment} />
    </article>
  );
}
