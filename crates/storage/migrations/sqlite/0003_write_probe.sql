-- One row a readiness check rewrites, to learn whether writes commit again
-- (after a full disk) without waiting for real traffic.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);
INSERT INTO write_probe (id, at) VALUES (1, 0);
