-- One decision per comment: the primary key is what makes moderation happen
-- exactly once, however often CommentCreated arrives.
CREATE TABLE decisions (
    comment_id TEXT PRIMARY KEY,
    status TEXT NOT NULL
);
