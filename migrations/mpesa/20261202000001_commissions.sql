-- Partner commissions paid by B2C (SPEC 3.1 partners' mpesaNumber "for commission
-- payments"; flow 5).

-- Projection of Core's partners (partner.* snapshots through Projection; a
-- deletion is a tombstone).
CREATE TABLE partners (
    id               uuid PRIMARY KEY,
    full_name        text NOT NULL,
    mpesa_number     text NOT NULL,
    status           text NOT NULL,
    commission_rate  numeric(14,2) NOT NULL,
    updated_at       timestamptz NOT NULL,
    deleted          boolean NOT NULL DEFAULT false
);

-- Every commissionRate a partner has had, from each snapshot's updatedAt: the
-- rate "at conversion time" is the one in force when the lead was converted, even
-- when the partner's events arrive after the conversion's or the rate changed
-- since (a fresh schema converging from history gets the same answer).
CREATE TABLE partner_rates (
    partner_id       uuid NOT NULL,
    valid_from       timestamptz NOT NULL,
    commission_rate  numeric(14,2) NOT NULL,
    PRIMARY KEY (partner_id, valid_from)
);

-- Converted partner referrals (CRM's lead.converted with referredBy).
CREATE TABLE referrals (
    lead_id        uuid PRIMARY KEY,
    partner_id     uuid NOT NULL,
    subscriber_id  uuid NOT NULL,
    converted_at   timestamptz NOT NULL
);
CREATE INDEX referrals_subscriber_idx ON referrals (subscriber_id);
CREATE INDEX referrals_partner_idx ON referrals (partner_id);

-- One commission per converted referral (the unique lead), payable once the
-- referred subscriber's first invoice is Paid. `amount` is exact; `payout_amount`
-- is the whole KES B2C sends (half away from zero). Each send attempt has its own
-- OriginatorConversationID `<id>-<attempt>`: Daraja refuses a reused one, so a
-- repeated request for one attempt cannot pay twice.
CREATE TABLE commissions (
    id                          uuid PRIMARY KEY,
    lead_id                     uuid NOT NULL CONSTRAINT commissions_lead_id_key UNIQUE,
    partner_id                  uuid NOT NULL,
    subscriber_id               uuid NOT NULL,
    invoice_id                  uuid NOT NULL,
    invoice_amount              numeric(14,2) NOT NULL,
    commission_rate             numeric(14,2) NOT NULL,
    basis                       text NOT NULL CHECK (basis IN ('Flat', 'Percent')),
    amount                      numeric(14,2) NOT NULL CHECK (amount > 0),
    payout_amount               numeric(14,2) NOT NULL,
    status                      text NOT NULL DEFAULT 'Pending Approval'
        CHECK (status IN ('Pending Approval', 'Approved', 'Sent', 'Paid', 'Failed')),
    phone                       text,
    attempts                    int NOT NULL DEFAULT 0,
    originator_conversation_id  text CONSTRAINT commissions_originator_key UNIQUE,
    conversation_id             text,
    receipt                     text,
    paid_amount                 numeric(14,2),
    result_code                 text,
    result_description          text,
    approved_by                 text,
    approved_at                 timestamptz,
    sent_at                     timestamptz,
    paid_at                     timestamptz,
    -- a sender holds an Approved commission until then (no two send it at once)
    send_claimed_until          timestamptz,
    -- when a Sent commission without a result is asked about (Transaction Status)
    next_check_at               timestamptz,
    status_queries              int NOT NULL DEFAULT 0,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commissions_status_idx ON commissions (status);
CREATE INDEX commissions_paid_at_idx ON commissions (paid_at) WHERE paid_at IS NOT NULL;
CREATE INDEX commissions_check_idx ON commissions (next_check_at) WHERE status = 'Sent';

CREATE INDEX invoice_payments_reference_idx ON invoice_payments (reference);
