CREATE TABLE comments (
    pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    post_id TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX comments_by_post ON comments (post_id, pos);
