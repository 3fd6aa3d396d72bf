-- Automatic STK prompts (ISP_MPESA_AUTO_STK, off by default): one per invoice per
-- trigger, queued by the Billing consumer in the event's transaction and sent by
-- a worker (no HTTP inside a consumer's transaction). Queued ones wait for the
-- subscriber's projection with back-off; Sent names the STK request; Skipped
-- says why (Paid already, a prompt open, nothing outstanding, ...).
CREATE TABLE auto_prompts (
    invoice_id      uuid NOT NULL,
    trigger         text NOT NULL CHECK (trigger IN ('Invoice Created', 'Invoice Overdue')),
    status          text NOT NULL DEFAULT 'Queued' CHECK (status IN ('Queued', 'Sent', 'Skipped')),
    attempts        int NOT NULL DEFAULT 0,
    next_at         timestamptz NOT NULL DEFAULT now(),
    outcome         text,
    stk_request_id  uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (invoice_id, trigger)
);
CREATE INDEX auto_prompts_due_idx ON auto_prompts (next_at) WHERE status = 'Queued';
