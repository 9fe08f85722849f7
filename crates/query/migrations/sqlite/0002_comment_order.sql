-- Where the comment's CommentCreated stands in the bus's log: comments are
-- listed in creation order even when an update arrived before the creation.
ALTER TABLE comments ADD COLUMN created_seq BIGINT;
