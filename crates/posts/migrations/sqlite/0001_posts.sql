CREATE TABLE posts (
    -- Creation order, which GET /posts keeps.
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL
);
