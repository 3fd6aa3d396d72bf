-- Notify: one delivery per request id (the requester's idempotency id), the
-- suppression list, and delivery reports that arrived before the send that
-- produced them was recorded.

CREATE TABLE deliveries (
    id                  uuid PRIMARY KEY,
    requester           text NOT NULL,
    reference           text,
    channel             text NOT NULL CONSTRAINT deliveries_channel_check
                          CHECK (channel IN ('sms', 'email')),
    recipient           text NOT NULL,
    subject             text,
    body                text NOT NULL,
    category            text NOT NULL CONSTRAINT deliveries_category_check
                          CHECK (category IN ('transactional', 'promotional')),
    status              text NOT NULL CONSTRAINT deliveries_status_check
                          CHECK (status IN ('Queued', 'Accepted', 'Sent', 'Delivered',
                                            'Undelivered', 'Expired', 'Failed')),
    provider            text NOT NULL DEFAULT 'none',
    provider_message_id text,
    cost                numeric(14, 4),
    cost_currency       text,
    failure_reason      text,
    -- Send attempts made (each claim counts one, also one cut short by a crash).
    attempts            integer NOT NULL DEFAULT 0,
    -- When the worker should (re)try; NULL once it has nothing left to do.
    next_attempt_at     timestamptz,
    -- A worker that claimed the row owns it until then; after a crash it is retried.
    lease_until         timestamptz,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX deliveries_due ON deliveries (channel, next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
CREATE UNIQUE INDEX deliveries_provider_message_id
    ON deliveries (provider, provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE INDEX deliveries_reference ON deliveries (requester, reference);

CREATE TABLE suppressions (
    channel    text NOT NULL CHECK (channel IN ('sms', 'email')),
    recipient  text NOT NULL,
    source     text NOT NULL,
    detail     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, recipient)
);

-- A provider may report on a message before our worker has committed the send
-- that returned its id; the report waits here and is applied when it has.
CREATE TABLE early_reports (
    provider            text NOT NULL,
    provider_message_id text NOT NULL,
    status              text NOT NULL,
    failure_reason      text,
    received_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, provider_message_id, status)
);
