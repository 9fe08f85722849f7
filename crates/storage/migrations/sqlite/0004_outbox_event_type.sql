-- The event's type beside its body, so the relay routes and counts it
-- without parsing the body. Rows queued before this migration have none
-- (the relay then reads it from the body).
ALTER TABLE outbox ADD COLUMN event_type TEXT NOT NULL DEFAULT '';
