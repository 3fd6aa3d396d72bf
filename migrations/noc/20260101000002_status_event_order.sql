-- Billing's status events (subscriber.suspended / reactivated / activated /
-- deactivated) can arrive out of order (redelivery after a failed attempt). The
-- RADIUS block state must follow the newest one, so each subscriber remembers the
-- time and id (UUIDv7, so time-ordered) of the status event last applied; an older
-- one is recorded as processed without any effect.
ALTER TABLE subscribers
    ADD COLUMN status_event_at timestamptz,
    ADD COLUMN status_event_id uuid;

-- A status event for a subscriber whose subscriber.created has not been applied
-- yet: kept (the newest per subscriber) and applied when it arrives.
CREATE TABLE early_status_events (
    subscriber      uuid PRIMARY KEY,
    status          text        NOT NULL CHECK (status IN ('Active', 'Suspended', 'Deactivated')),
    account_number  text        NOT NULL,
    reason          text,
    at              timestamptz NOT NULL,
    event_id        uuid        NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);
