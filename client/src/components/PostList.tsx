import type { Comment, Post } from '../api';
import { PostCard, type PostCardProps } from './PostCard';

export interface PostListProps {
  posts: Post[];
  loaded: boolean;
  onCommentsChanged: (postId: string, comments: Comment[]) => void;
  submitComment?: PostCardProps['submitComment'];
}

export function PostList({ posts, loaded, onCommentsChanged, submitComment }: PostListProps) {
  return (
    <section className="posts" aria-labelledby="posts-heading">
      <h2 id="posts-heading">Posts</h2>
      {!loaded && posts.length === 0 ? (
        <p className="empty" role="status">
          Loading posts…
        </p>
      ) : posts.length === 0 ? (
        <p className="empty">No posts yet. Create the first one above.</p>
      ) : (
        <div className="post-grid">
          {posts.map((post) => (
            <PostCard key={post.id} post={post} onCommentsChanged={onCommentsChanged} submitComment={submitComment} />
          ))}
        </div>
      )}
    </section>
  );
}
