-- Events that can never be handled (malformed, or failing every delivery):
-- set aside with the reason, so the events behind them go on.
CREATE TABLE dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bus_seq BIGINT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
