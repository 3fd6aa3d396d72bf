-- wa-parser (SPEC 3.2, issue 10): partners' WhatsApp and SMS messages turned into
-- CRM leads. Projections of Core's partners and CRM's buildings (fed by events,
-- converging from history on a fresh schema), the business-scoped WhatsApp ids
-- learned from messages, and the log of every inbound message.

-- Projection of Core's partners. `updated_at` is the snapshot's: older snapshots
-- arriving late are ignored.
CREATE TABLE partners (
    id            uuid PRIMARY KEY,
    full_name     text        NOT NULL,
    -- E.164, the key a sender's number is matched on.
    phone_number  text        NOT NULL,
    status        text        NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX partners_phone_number_idx ON partners (phone_number) WHERE NOT deleted;

-- WhatsApp users with a username may write without a phone number, carrying only
-- a business-scoped user id (BSUID). The first message that carries both the
-- number of a known partner and a BSUID records it here; later messages with
-- only the BSUID are matched on it.
CREATE TABLE partner_bsuids (
    bsuid       text PRIMARY KEY,
    partner     uuid        NOT NULL,
    learned_at  timestamptz NOT NULL DEFAULT now()
);

-- Projection of CRM's buildings: which partner looks after which building.
CREATE TABLE buildings (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    partner     uuid,
    deleted     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX buildings_partner_idx ON buildings (partner) WHERE NOT deleted;

-- Every inbound message, stored before it is processed (a crash in between loses
-- nothing: the worker picks up what is due). One row per provider message id, so
-- a redelivered webhook changes nothing.
CREATE TABLE inbound_messages (
    id                   uuid PRIMARY KEY,
    channel              text        NOT NULL CONSTRAINT inbound_messages_channel_check
                         CHECK (channel IN ('WhatsApp', 'SMS')),
    -- WhatsApp `messages[].id` (wamid...) or Africa's Talking `id`.
    provider_message_id  text        NOT NULL,
    -- E.164 when the message carried a usable number, else the raw `from`.
    sender               text,
    -- WhatsApp business-scoped user id, when present.
    sender_bsuid         text,
    -- Where a reply goes: WhatsApp `wa_id` digits or BSUID; the SMS number.
    reply_to             text,
    partner              uuid,
    -- `text`, `image`, ... (SMS: always `text`).
    message_type         text        NOT NULL DEFAULT 'text',
    raw_text             text,
    received_at          timestamptz NOT NULL DEFAULT now(),
    outcome              text        NOT NULL DEFAULT 'Pending' CONSTRAINT inbound_messages_outcome_check
                         CHECK (outcome IN ('Pending', 'Lead created', 'Duplicate', 'Unknown sender',
                                            'Inactive partner', 'Parse error', 'CRM unavailable',
                                            'Rejected', 'Help', 'Not text')),
    reason               text,
    lead                 uuid,
    -- What the lead was keyed on, to spot the same referral sent twice:
    -- partner|building|lower(unit)|subscriber phone.
    lead_key             text,
    reply                text,
    -- NULL (no reply), 'Pending' (WhatsApp, to send), 'Sent', 'Failed',
    -- 'Requested' (SMS: handed to Notify through the outbox).
    reply_status         text CONSTRAINT inbound_messages_reply_status_check
                         CHECK (reply_status IN ('Pending', 'Sent', 'Failed', 'Requested')),
    reply_error          text,
    -- The provider's id of the reply (wamid...), or Notify's request id.
    reply_id             text,
    attempts             integer     NOT NULL DEFAULT 0,
    -- Due for (another) attempt at this time; a worker that claims a row moves it
    -- into the future as a lease, so a crashed worker's row comes back.
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    processed_at         timestamptz,
    -- An Admin may re-process a failed message once.
    reprocessed_at       timestamptz,
    reprocessed_by       uuid,
    previous_outcome     text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbound_messages_provider_message_id_key UNIQUE (channel, provider_message_id)
);
CREATE INDEX inbound_messages_due_idx ON inbound_messages (next_attempt_at)
    WHERE outcome IN ('Pending', 'CRM unavailable') OR reply_status = 'Pending';
CREATE INDEX inbound_messages_lead_key_idx ON inbound_messages (lead_key) WHERE outcome = 'Lead created';
CREATE INDEX inbound_messages_received_at_idx ON inbound_messages (received_at);
