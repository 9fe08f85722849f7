import { useCallback, useReducer } from 'react';
import type { Comment } from './api';
import { LiveIndicator } from './components/LiveIndicator';
import { PostCreate } from './components/PostCreate';
import { PostList } from './components/PostList';
import { useLiveUpdates, type LiveOptions } from './live';
import { initialState, postsInOrder, reducer } from './state';

export interface AppProps {
  liveOptions?: LiveOptions;
}

export function App({ liveOptions }: AppProps) {
  const [state, dispatch] = useReducer(reducer, initialState);
  const status = useLiveUpdates(dispatch, liveOptions);

  const onCreated = useCallback((post: { id: string; title: string }) => dispatch({ type: 'created', post }), []);
  const onCommentsChanged = useCallback(
    (postId: string, comments: Comment[]) => dispatch({ type: 'comments', postId, comments }),
    [],
  );

  return (
    <div className="app">
      <header className="topbar">
        <span className="brand">Blog</span>
        <LiveIndicator status={status} />
      </header>
      <main className="container">
        <PostCreate onCreated={onCreated} />
        <hr />
        <PostList posts={postsInOrder(state)} loaded={state.loaded} onCommentsChanged={onCommentsChanged} />
      </main>
    </div>
  );
}
