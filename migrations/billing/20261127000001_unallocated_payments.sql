-- M-Pesa money Billing could not put on an invoice by itself: the account number
-- (BillRefNumber) matches no subscriber, or the invoice refused it. It is kept
-- here, never dropped, until a Billing Manager or Admin allocates it to an
-- invoice, which records the Payment (method Mpesa, the receipt as reference).
CREATE TABLE unallocated_payments (
    id                 uuid PRIMARY KEY,
    payment_reference  text          NOT NULL UNIQUE,  -- the M-Pesa receipt
    amount             numeric(14,2) NOT NULL CHECK (amount > 0),
    payer_phone        text          NOT NULL,
    account_reference  text          NOT NULL,
    transaction_time   timestamptz   NOT NULL,
    source             text          NOT NULL,
    reason             text          NOT NULL,
    status             text          NOT NULL DEFAULT 'Open' CHECK (status IN ('Open', 'Allocated')),
    payment_id         uuid          REFERENCES payments (id),
    allocated_by       uuid,
    allocated_at       timestamptz,
    created_at         timestamptz   NOT NULL DEFAULT now(),
    updated_at         timestamptz   NOT NULL DEFAULT now(),
    CHECK ((status = 'Allocated') = (payment_id IS NOT NULL))
);
CREATE INDEX unallocated_payments_open_idx ON unallocated_payments (created_at) WHERE status = 'Open';
