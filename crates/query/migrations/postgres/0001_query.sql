-- The read model behind GET /posts, built only from events.
CREATE TABLE posts (
    -- Order of arrival, which is creation order for events from one emitter.
    pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL
);

-- A comment may arrive before its post; it is kept and shown once the post is.
CREATE TABLE comments (
    pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    post_id TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL,
    -- How far the status has come (pending 0, decided 1): a lower rank never
    -- overwrites a higher one, so late and repeated events change nothing.
    rank BIGINT NOT NULL
);
CREATE INDEX comments_by_post ON comments (post_id, pos);
