CREATE TABLE posts (
    -- Creation order, which GET /posts keeps.
    pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL
);
