-- Idempotency keys for synchronous service-to-service writes (DESIGN section 1):
-- the first request with a key stores its answer; a retry with the same key and the
-- same caller gets the stored answer instead of a second effect.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    caller        text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    status        smallint    NOT NULL,
    response      jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);
