-- Billing & Finance (SPEC 3.3): subscribers, invoices, payments, expenses, the
-- daily run's log, and the projection of Core's plans.
-- Constraint names follow Postgres' <table>_<column>_<kind> pattern: the API maps
-- them back to the field in its 400/409 answers.

-- UUIDv7 for rows and events written by set-based SQL (Postgres 15 has no uuidv7()):
-- 48 bits of Unix milliseconds, then random bits, version 7 (set_bit numbers bits
-- from the least significant bit of each byte), RFC 4122 variant from gen_random_uuid.
CREATE FUNCTION uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1), 54, 1), 55, 0),
        'hex')::uuid
$$;

-- One billing cycle after `d`, on the subscriber's anchor day (the day of month
-- their periods start), clamped to the month's last day: anchor 31 gives
-- Jan 31 -> Feb 28 (29) -> Mar 31, never drifting to the 28th.
CREATE FUNCTION add_cycle(d date, cycle text, anchor integer) RETURNS date
LANGUAGE sql IMMUTABLE STRICT AS $$
    WITH m AS (
        SELECT (date_trunc('month', d)
                + make_interval(months => CASE cycle WHEN 'Quarterly' THEN 3 ELSE 1 END))::date AS first
    )
    SELECT first + (LEAST(anchor,
                          extract(day FROM (first + interval '1 month' - interval '1 day'))::integer) - 1)
    FROM m
$$;

-- Core's plans, as last seen in plan.* events (newer updatedAt wins).
CREATE TABLE plans (
    id                      uuid PRIMARY KEY,
    name                    text          NOT NULL,
    price                   numeric(14,2) NOT NULL,
    billing_cycle           text          NOT NULL,
    plan_enabled            boolean       NOT NULL,
    active_for_new_signups  boolean       NOT NULL,
    deleted                 boolean       NOT NULL DEFAULT false,
    updated_at              timestamptz   NOT NULL
);

-- Account numbers: a 5+ digit sequence number and a Luhn check digit, all digits
-- so it is quick to type as an M-Pesa paybill account number and a typo is caught.
CREATE SEQUENCE account_number_seq START 10001;
-- Invoice numbers: INV-000001, INV-000002, ... in creation order.
CREATE SEQUENCE invoice_number_seq START 1;

CREATE TABLE subscribers (
    id                     uuid PRIMARY KEY,
    account_number         text          NOT NULL CONSTRAINT subscribers_account_number_key UNIQUE,
    first_name             text          NOT NULL,
    last_name              text          NOT NULL,
    mpesa_number           text          NOT NULL,
    contact_phone          text,
    email                  text,
    status                 text          NOT NULL DEFAULT 'Pending Installation'
                           CONSTRAINT subscribers_status_check
                           CHECK (status IN ('Pending Installation', 'Active', 'Suspended', 'Deactivated')),
    service_plan           uuid          NOT NULL,
    billing_cycle          text          NOT NULL CONSTRAINT subscribers_billing_cycle_check CHECK (billing_cycle IN ('Monthly', 'Quarterly')),
    -- Start of the next period to invoice (see docs/billing.md).
    next_due_date          date          NOT NULL,
    -- Day of month periods start on (month-end safe cycles).
    billing_anchor_day     integer       NOT NULL CONSTRAINT subscribers_billing_anchor_day_check CHECK (billing_anchor_day BETWEEN 1 AND 31),
    -- payments - charges: negative = owes, positive = credit.
    account_balance        numeric(14,2) NOT NULL DEFAULT 0,
    grace_period_end_date  date,
    trial_end_date         date,
    address_notes          text,
    internal_notes         text,
    connection_type        text CONSTRAINT subscribers_connection_type_check
                           CHECK (connection_type IN ('PPPoE', 'IPoE/DHCP', 'Static IP', 'Hotspot')),
    assigned_ip            text,
    -- CRM building unit / building / lead.
    service_location       uuid,
    building               uuid,
    lead_id                uuid,
    created_at             timestamptz   NOT NULL DEFAULT now(),
    updated_at             timestamptz   NOT NULL DEFAULT now()
);
-- The daily run's scan.
CREATE INDEX subscribers_due_idx ON subscribers (next_due_date) WHERE status = 'Active';
CREATE INDEX subscribers_building_idx ON subscribers (building);
CREATE UNIQUE INDEX subscribers_lead_id_key ON subscribers (lead_id) WHERE lead_id IS NOT NULL;

CREATE TABLE invoices (
    id              uuid PRIMARY KEY,
    invoice_number  text          NOT NULL CONSTRAINT invoices_invoice_number_key UNIQUE,
    subscriber_id   uuid          NOT NULL CONSTRAINT invoices_subscriber_id_fkey REFERENCES subscribers (id),
    amount_due      numeric(14,2) NOT NULL CONSTRAINT invoices_amount_due_check CHECK (amount_due >= 0),
    -- Settled so far, by payments or by the subscriber's credit.
    amount_paid     numeric(14,2) NOT NULL DEFAULT 0,
    due_date        date          NOT NULL,
    status          text          NOT NULL DEFAULT 'Unpaid'
                    CONSTRAINT invoices_status_check CHECK (status IN ('Draft', 'Unpaid', 'Paid', 'Overdue', 'Cancelled')),
    line_items      jsonb         NOT NULL,
    -- The service period a recurring invoice covers, [period_start, period_end).
    -- NULL for the first invoice and manual ones.
    period_start    date,
    period_end      date,
    created_at      timestamptz   NOT NULL DEFAULT now(),
    updated_at      timestamptz   NOT NULL DEFAULT now(),
    -- Exactly one invoice per subscriber per period, however often the run runs.
    CONSTRAINT invoices_period_start_key UNIQUE (subscriber_id, period_start)
);
CREATE INDEX invoices_open_idx ON invoices (due_date) WHERE status = 'Unpaid';
CREATE INDEX invoices_overdue_idx ON invoices (subscriber_id) WHERE status = 'Overdue';

CREATE TABLE payments (
    id                 uuid PRIMARY KEY,
    payment_reference  text          NOT NULL,
    invoice_id         uuid          NOT NULL CONSTRAINT payments_invoice_id_fkey REFERENCES invoices (id),
    subscriber_id      uuid          NOT NULL REFERENCES subscribers (id),
    amount_paid        numeric(14,2) NOT NULL CONSTRAINT payments_amount_paid_check CHECK (amount_paid > 0),
    payment_method     text          NOT NULL CONSTRAINT payments_payment_method_check CHECK (payment_method IN ('Mpesa', 'Bank Transfer', 'Cash')),
    payment_date       date          NOT NULL,
    created_at         timestamptz   NOT NULL DEFAULT now(),
    updated_at         timestamptz   NOT NULL DEFAULT now(),
    -- The same receipt is never counted twice.
    CONSTRAINT payments_payment_reference_key UNIQUE (payment_method, payment_reference)
);
CREATE INDEX payments_invoice_idx ON payments (invoice_id);

CREATE TABLE expenses (
    id            uuid PRIMARY KEY,
    expense_date  date          NOT NULL,
    category      text          NOT NULL,
    vendor        text,
    amount        numeric(14,2) NOT NULL CONSTRAINT expenses_amount_check CHECK (amount > 0),
    description   text,
    -- {filename, contentType, size} of the stored receipt; the storage key is private.
    receipt       jsonb,
    receipt_key   text,
    created_at    timestamptz   NOT NULL DEFAULT now(),
    updated_at    timestamptz   NOT NULL DEFAULT now()
);

-- What each daily run did.
CREATE TABLE daily_runs (
    id                     uuid PRIMARY KEY,
    run_date               date        NOT NULL,
    trigger                text        NOT NULL,
    invoices_created       integer     NOT NULL,
    invoices_overdue       integer     NOT NULL,
    subscribers_suspended  integer     NOT NULL,
    duration_ms            integer     NOT NULL,
    started_at             timestamptz NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX daily_runs_run_date_idx ON daily_runs (run_date);

-- An outbox row from SQL, shaped exactly as isp_events::CloudEvent serializes
-- (the daily run writes its events set-based, not one round trip per event).
CREATE FUNCTION cloud_event(ev_id uuid, ev_type text, ev_subject text, ev_data jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE AS $$
    SELECT jsonb_build_object(
        'specversion', '1.0', 'id', ev_id, 'source', '/isp/billing', 'type', ev_type,
        'subject', ev_subject,
        'time', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'datacontenttype', 'application/json', 'data', ev_data)
$$;

-- The SubscriberSnapshot of crates/events (no financial fields).
CREATE FUNCTION subscriber_snapshot(s subscribers) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.id, 'accountNumber', s.account_number, 'firstName', s.first_name,
        'lastName', s.last_name, 'mpesaNumber', s.mpesa_number, 'contactPhone', s.contact_phone,
        'email', s.email, 'status', s.status, 'servicePlan', s.service_plan,
        'billingCycle', s.billing_cycle, 'nextDueDate', s.next_due_date,
        'addressNotes', s.address_notes, 'serviceLocation', s.service_location,
        'building', s.building, 'leadId', s.lead_id,
        'updatedAt', to_char(s.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;
