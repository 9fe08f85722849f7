-- Every event ever accepted, in order. The sequence number is assigned by
-- the bus and is part of the stored body.
CREATE TABLE events (
    seq BIGINT PRIMARY KEY,
    -- The emitter's event id, when it sent one: a resend is recognised and
    -- stored once.
    event_id TEXT UNIQUE,
    body TEXT NOT NULL
);

-- How far each subscriber has acknowledged, so delivery resumes there.
CREATE TABLE cursors (
    subscriber TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
