-- Tables every service has, whatever it stores besides.

-- Events committed with a state change, waiting to be relayed to the bus.
CREATE TABLE outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL,
    body TEXT NOT NULL
);

-- Events this service has applied, by event id or natural key: a redelivery
-- finds its key here and changes nothing.
CREATE TABLE processed_events (
    event_key TEXT PRIMARY KEY
);

-- The highest bus sequence number applied, where catch-up resumes.
CREATE TABLE consumer_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq BIGINT NOT NULL
);
INSERT INTO consumer_state (id, last_seq) VALUES (1, 0);
