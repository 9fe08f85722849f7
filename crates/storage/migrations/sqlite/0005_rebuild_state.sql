-- A rebuild of this service's read model that has not finished: every event
-- of the log up to `seq` has been applied again. The row exists only while a
-- rebuild runs, or after one was cut off; a restarted service goes on from
-- `seq` instead of leaving the model with a hole its cursor has passed.
CREATE TABLE rebuild_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
