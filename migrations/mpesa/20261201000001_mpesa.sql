-- M-Pesa (Daraja) state. Money is numeric(14,2), as in Billing.

-- Settings shared by every replica: the unguessable callback path token (made
-- once, unless ISP_MPESA_CALLBACK_TOKEN gives one).
CREATE TABLE settings (
    key         text PRIMARY KEY,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The one current OAuth token per consumer key. Daraja cancels the previous token
-- whenever a new one is issued, so replicas share this row and renew it under its
-- row lock instead of each fetching its own. The key is stored hashed.
CREATE TABLE daraja_tokens (
    consumer_key_sha256  text PRIMARY KEY,
    access_token         text,
    expires_at           timestamptz,
    renewed_at           timestamptz
);

-- Every request to Daraja and every callback from it, with its raw payload,
-- written in the transaction of its effect.
CREATE TABLE transactions (
    id                          uuid PRIMARY KEY,
    kind                        text NOT NULL CHECK (kind IN (
        'STK Push', 'STK Callback', 'STK Query', 'C2B Register', 'C2B Validation',
        'C2B Confirmation', 'Pull Transactions', 'B2C Request', 'B2C Result', 'B2C Timeout',
        'Transaction Status', 'Transaction Status Result')),
    merchant_request_id         text,
    checkout_request_id         text,
    conversation_id             text,
    originator_conversation_id  text,
    receipt                     text,
    amount                      numeric(14,2),
    phone                       text,
    account_reference           text,
    invoice_id                  uuid,
    status                      text NOT NULL,
    result_code                 text,
    result_description          text,
    raw                         jsonb NOT NULL,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transactions_created_idx ON transactions (created_at);
CREATE INDEX transactions_checkout_idx ON transactions (checkout_request_id) WHERE checkout_request_id IS NOT NULL;
CREATE INDEX transactions_receipt_idx ON transactions (receipt) WHERE receipt IS NOT NULL;

-- An STK push and its outcome. Requested: saved, not yet accepted by Daraja;
-- Pending: the customer has the prompt; Paid / Failed: the callback or the query
-- settled it.
CREATE TABLE stk_requests (
    id                   uuid PRIMARY KEY,
    invoice_id           uuid NOT NULL,
    subscriber_id        uuid NOT NULL,
    account_reference    text NOT NULL,
    phone                text NOT NULL,
    amount               numeric(14,2) NOT NULL CHECK (amount >= 1 AND amount <= 250000),
    trigger              text NOT NULL DEFAULT 'Staff' CHECK (trigger IN ('Staff', 'Service', 'Invoice Created', 'Invoice Overdue')),
    status               text NOT NULL DEFAULT 'Requested' CHECK (status IN ('Requested', 'Pending', 'Paid', 'Failed')),
    merchant_request_id  text,
    checkout_request_id  text CONSTRAINT stk_requests_checkout_request_id_key UNIQUE,
    receipt              text,
    result_code          text,
    result_description   text,
    settled_by           text CHECK (settled_by IN ('Callback', 'Query', 'Pull Transactions')),
    queries              int NOT NULL DEFAULT 0,
    next_query_at        timestamptz,
    requested_by         text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
-- One prompt at a time per invoice: a second one while the first waits is a 409.
CREATE UNIQUE INDEX stk_requests_open_invoice_key ON stk_requests (invoice_id) WHERE status IN ('Requested', 'Pending');
-- Automatic prompts: once per invoice per trigger.
CREATE UNIQUE INDEX stk_requests_auto_key ON stk_requests (invoice_id, trigger) WHERE trigger IN ('Invoice Created', 'Invoice Overdue');
CREATE INDEX stk_requests_query_idx ON stk_requests (next_query_at) WHERE status = 'Pending';

-- Money received, one row per M-Pesa receipt across STK, C2B and Pull
-- Transactions: the row's insert is what publishes mpesa.payment.confirmed, so the
-- same receipt arriving by two paths (or ten replays) is one payment.
CREATE TABLE payments (
    id                 uuid PRIMARY KEY,
    receipt            text NOT NULL CONSTRAINT payments_receipt_key UNIQUE,
    amount             numeric(14,2) NOT NULL CHECK (amount > 0),
    phone              text NOT NULL,
    phone_sha256       text,
    account_reference  text NOT NULL,
    bill_ref_number    text NOT NULL,
    subscriber_id      uuid,
    invoice_id         uuid,
    -- not credited to by account number, but the payer's hashed number is this
    -- subscriber's mpesaNumber: a suggestion for finance
    suggested_subscriber_id uuid,
    source             text NOT NULL CHECK (source IN ('stk', 'c2b')),
    found_by           text NOT NULL CHECK (found_by IN ('STK Callback', 'C2B Confirmation', 'Pull Transactions')),
    transaction_time   timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_time_idx ON payments (transaction_time);

-- Projections of Billing's subscribers and invoices (from subscriber.* and
-- invoice.* snapshots; the newer snapshot wins) and of the payments recorded on
-- each invoice (payment.received), so the outstanding amount is known here.
CREATE TABLE subscribers (
    id               uuid PRIMARY KEY,
    account_number   text NOT NULL,
    -- upper case, no spaces or dashes: what a typed BillRefNumber is matched on
    account_key      text NOT NULL,
    full_name        text NOT NULL,
    mpesa_number     text NOT NULL,
    -- sha256 of the 12-digit 2547... form, as C2B confirmations carry the payer
    mpesa_sha256     text NOT NULL,
    status           text NOT NULL,
    lead_id          uuid,
    updated_at       timestamptz NOT NULL
);
CREATE UNIQUE INDEX subscribers_account_key_idx ON subscribers (account_key);
CREATE INDEX subscribers_mpesa_sha256_idx ON subscribers (mpesa_sha256);

CREATE TABLE invoices (
    id              uuid PRIMARY KEY,
    invoice_number  text NOT NULL,
    subscriber_id   uuid NOT NULL,
    amount_due      numeric(14,2) NOT NULL,
    due_date        date NOT NULL,
    status          text NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX invoices_subscriber_idx ON invoices (subscriber_id);

CREATE TABLE invoice_payments (
    payment_id  uuid PRIMARY KEY,
    invoice_id  uuid NOT NULL,
    amount      numeric(14,2) NOT NULL,
    reference   text NOT NULL
);
CREATE INDEX invoice_payments_invoice_idx ON invoice_payments (invoice_id);
