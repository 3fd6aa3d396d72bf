-- The events a consumer of this service is failing on, one row per consumer and
-- event while it fails: written after each failed delivery (outside the handler's
-- transaction, which rolled back) and removed once the event is applied. Admin
-- reads it as the service's `failingEvents` collection and may skip an event that
-- can never apply (recorded as processed without its effect); a skipped row stays,
-- as the record of who skipped what and why. The event itself stays in NATS; this
-- table is a view of the trouble, never the only copy of anything
-- (docs/operations.md).
CREATE TABLE IF NOT EXISTS failing_events (
    id          uuid PRIMARY KEY,
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    type        text        NOT NULL,
    source      text        NOT NULL,
    subject     text,
    -- NATS's delivery count at the last failure.
    deliveries  bigint      NOT NULL CHECK (deliveries >= 1),
    last_error  text        NOT NULL,
    skipped_at  timestamptz,
    skipped_by  text,
    skip_reason text,
    -- The first failure; the last failure or the skip.
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT failing_events_consumer_event_key UNIQUE (consumer, event_id)
);
