-- The W3C traceparent of the request that wrote each audit event (empty
-- when the caller sent none); covered by the event's hash when not empty.
ALTER TABLE audit ADD COLUMN trace TEXT NOT NULL DEFAULT '';
