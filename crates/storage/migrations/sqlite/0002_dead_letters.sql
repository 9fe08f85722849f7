-- Events that can never be handled (malformed, or failing every delivery):
-- set aside with the reason, so the events behind them go on.
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bus_seq BIGINT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL
);
