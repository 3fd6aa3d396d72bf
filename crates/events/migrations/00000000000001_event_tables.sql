-- Event backbone tables, created in whichever schema the connection's search_path
-- names first: every service connects with search_path = its own schema, so each
-- service gets its own outbox and its own processed_events.

-- Transactional outbox. A producer inserts the event in the same transaction as
-- the state change it describes; the relay publishes it to JetStream and sets
-- published_at once the PubAck is in.
CREATE TABLE outbox (
    -- The CloudEvent id (UUIDv7), also sent as Nats-Msg-Id so JetStream drops
    -- a duplicate publish within its duplicate window.
    id           uuid PRIMARY KEY,
    -- NATS subject: isp.<service>.<type>
    subject      text        NOT NULL,
    type         text        NOT NULL,
    -- The whole CloudEvent, exactly as published.
    payload      jsonb       NOT NULL,
    -- W3C trace context of the request that produced the event; sent as the
    -- `traceparent` NATS header, not inside the JSON.
    traceparent  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);

-- The relay only ever scans what is still to be sent; keep that scan tiny.
CREATE INDEX outbox_unpublished_idx ON outbox (created_at, id) WHERE published_at IS NULL;
-- Pruning of old published rows.
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake the relay as soon as an event is committed (NOTIFY is delivered at commit,
-- and not at all on rollback). The channel is database-wide, so a notification
-- may wake the relays of other schemas too; they just find nothing to do.
CREATE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Idempotent consumers: a consumer records each event id it has applied in the
-- same transaction as the effect, so a redelivered event is a no-op.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
