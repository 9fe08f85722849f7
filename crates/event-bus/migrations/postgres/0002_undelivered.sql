-- Events a subscriber could not take after every attempt (a poison event:
-- the subscriber answers but fails on it each time), set aside so the events
-- behind it go on. An operator lists them and asks to send them again.
CREATE TABLE undelivered (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber TEXT NOT NULL,
    seq BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    reason TEXT NOT NULL,
    -- 1 once an operator asked to send it again; the delivery does, then
    -- forgets it or sets it aside once more.
    replay INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX undelivered_by_subscriber ON undelivered (subscriber, replay, id);
