-- Support & Communications (SPEC 3.5): projections of other services' data, tickets
-- (customer and network), the communication log, contacts, templates and the
-- notification settings. Constraint names follow Postgres' <table>_<column>_<kind>
-- pattern so the API can name the field in its 400/409 answers.

-- ---- projections (read-only copies fed by events) ------------------------------

-- Billing's subscribers (never balances) plus NOC's router for each.
CREATE TABLE subscribers (
    id                uuid PRIMARY KEY,
    account_number    text        NOT NULL,
    first_name        text        NOT NULL,
    last_name         text        NOT NULL,
    mpesa_number      text        NOT NULL,
    contact_phone     text,
    email             text,
    status            text        NOT NULL,
    service_plan      uuid,
    service_location  uuid,
    building          uuid,
    updated_at        timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- Copied from subscriber_routers below.
    router            uuid
);
CREATE INDEX subscribers_plan_idx ON subscribers (service_plan);
CREATE INDEX subscribers_router_idx ON subscribers (router);
CREATE INDEX subscribers_building_idx ON subscribers (building);

-- NOC's router per subscriber (subscriber.network_updated, ordered by its `at`).
-- Kept apart from `subscribers` because NOC's event may arrive before Billing's.
CREATE TABLE subscriber_routers (
    subscriber_id  uuid PRIMARY KEY,
    router         uuid,
    at             timestamptz NOT NULL
);

-- Core's staff: tickets are assigned to Active Support Agents only.
CREATE TABLE staff (
    id          uuid PRIMARY KEY,
    full_name   text        NOT NULL,
    role        text        NOT NULL,
    status      text        NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Core's plans and CRM's buildings: names for bulk filters and templates.
CREATE TABLE plans (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    deleted     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL
);
CREATE TABLE buildings (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    deleted     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL
);

-- NOC's resources: a Zabbix host is matched to a Router by management IP or name.
CREATE TABLE resources (
    id             uuid PRIMARY KEY,
    resource_name  text        NOT NULL,
    resource_type  text        NOT NULL,
    status         text        NOT NULL,
    location       uuid,
    management_ip  text,
    deleted        boolean     NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL
);

-- ---- tickets ------------------------------------------------------------------------

-- Customer tickets are numbered TCK-000001, TCK-000002, ... from this sequence
-- (gaps after a rolled-back create are harmless; order and uniqueness are what
-- matter). Network tickets are NET-<Zabbix event id>, so the NOC can tell Zabbix
-- the ticket's id without waiting for Support.
CREATE SEQUENCE ticket_number_seq;

CREATE TABLE tickets (
    id                   uuid PRIMARY KEY,
    ticket_id            text        NOT NULL CONSTRAINT tickets_ticket_id_key UNIQUE
                         DEFAULT 'TCK-' || lpad(nextval('ticket_number_seq')::text, 6, '0'),
    -- A Customer ticket is about one subscriber; a Network ticket (from Zabbix) about
    -- a host, and then has no subscriber.
    kind                 text        NOT NULL DEFAULT 'Customer'
                         CONSTRAINT tickets_kind_check CHECK (kind IN ('Customer', 'Network')),
    subscriber           uuid        CONSTRAINT tickets_subscriber_fkey REFERENCES subscribers (id),
    subject              text        NOT NULL,
    description          text        NOT NULL,
    status               text        NOT NULL DEFAULT 'Open'
                         CONSTRAINT tickets_status_check CHECK (status IN ('Open', 'In Progress', 'Resolved', 'Closed')),
    priority             text        NOT NULL
                         CONSTRAINT tickets_priority_check CHECK (priority IN ('Low', 'Medium', 'High')),
    assigned_to          uuid,
    -- Network tickets: the Zabbix problem (one ticket per problem event id).
    zabbix_event_id      text        CONSTRAINT tickets_zabbix_event_id_key UNIQUE,
    network_host         text,
    network_host_ip      text,
    network_severity     text,
    problem_started_at   timestamptz,
    -- The NOC router the host matched, and how many subscribers sit behind it.
    resource             uuid,
    affected_subscribers integer,
    -- [{at, source, author, text}], oldest first: Zabbix updates, recovery, ...
    notes                jsonb       NOT NULL DEFAULT '[]',
    resolved_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tickets_subscriber_check CHECK ((kind = 'Customer') = (subscriber IS NOT NULL))
);
CREATE INDEX tickets_subscriber_idx ON tickets (subscriber);

-- A recovery that arrives before its problem waits here; the problem's ticket is
-- then created resolved.
CREATE TABLE early_recoveries (
    zabbix_event_id  text PRIMARY KEY,
    recovered_at     timestamptz NOT NULL,
    recovery_event_id text       NOT NULL
);

-- ---- contacts and templates ------------------------------------------------------

CREATE TABLE contacts (
    id            uuid PRIMARY KEY,
    -- E.164 after normalization, so "0712..." and "+254712..." collide.
    phone_number  text        NOT NULL CONSTRAINT contacts_phone_number_key UNIQUE,
    full_name     text,
    source        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE message_templates (
    id              uuid PRIMARY KEY,
    template_name   text        NOT NULL CONSTRAINT message_templates_template_name_key UNIQUE,
    content         text        NOT NULL,
    -- Email subject (the SMS has none); a template too.
    subject         text,
    -- At most one template per trigger event is the one automated sends use.
    trigger_event   text        CONSTRAINT message_templates_trigger_event_key UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Which trigger events notify customers, set by Admin (rows seeded below).
CREATE TABLE notification_triggers (
    id              uuid PRIMARY KEY,
    trigger_event   text        NOT NULL CONSTRAINT notification_triggers_trigger_event_key UNIQUE,
    enabled         boolean     NOT NULL DEFAULT true,
    send_sms        boolean     NOT NULL DEFAULT true,
    send_email      boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

INSERT INTO notification_triggers (id, trigger_event) VALUES
    (gen_random_uuid(), 'invoice.created'),
    (gen_random_uuid(), 'invoice.overdue'),
    (gen_random_uuid(), 'payment.received'),
    (gen_random_uuid(), 'subscriber.activated'),
    (gen_random_uuid(), 'subscriber.suspended'),
    (gen_random_uuid(), 'subscriber.reactivated'),
    (gen_random_uuid(), 'ticket.updated');

-- The editable defaults, one per trigger.
INSERT INTO message_templates (id, template_name, trigger_event, subject, content) VALUES
    (gen_random_uuid(), 'Invoice created', 'invoice.created', 'Invoice {{ invoiceNumber }}',
     'Dear {{ firstName }}, invoice {{ invoiceNumber }} for {{ amountDue }} is due on {{ dueDate }}. Pay by M-Pesa to account {{ accountNumber }}.'),
    (gen_random_uuid(), 'Invoice overdue', 'invoice.overdue', 'Invoice {{ invoiceNumber }} is overdue',
     'Dear {{ firstName }}, invoice {{ invoiceNumber }} for {{ amountDue }} was due on {{ dueDate }}. Please pay to account {{ accountNumber }} to keep your service.'),
    (gen_random_uuid(), 'Payment received', 'payment.received', 'Payment received',
     'Dear {{ firstName }}, we received {{ amountPaid }} (ref {{ paymentReference }}) on {{ paymentDate }}. Thank you.'),
    (gen_random_uuid(), 'Service activated', 'subscriber.activated', 'Welcome',
     'Dear {{ firstName }}, your internet service (account {{ accountNumber }}) is now active. Welcome!'),
    (gen_random_uuid(), 'Service suspended', 'subscriber.suspended', 'Service suspended',
     'Dear {{ firstName }}, your service (account {{ accountNumber }}) was suspended on {{ date }}. Pay your balance to reconnect.'),
    (gen_random_uuid(), 'Service reactivated', 'subscriber.reactivated', 'Service restored',
     'Dear {{ firstName }}, your service (account {{ accountNumber }}) is back on since {{ date }}. Thank you.'),
    (gen_random_uuid(), 'Ticket update', 'ticket.updated', 'Ticket {{ ticketId }}: {{ status }}',
     'Dear {{ firstName }}, your ticket {{ ticketId }} ({{ subject }}) is now {{ status }}.');

-- ---- the communication log -------------------------------------------------------

CREATE TABLE messages (
    id                   uuid PRIMARY KEY,
    recipient            text        NOT NULL,
    type                 text        NOT NULL CONSTRAINT messages_type_check CHECK (type IN ('SMS', 'Email')),
    content              text        NOT NULL,
    subject              text,
    status               text        NOT NULL DEFAULT 'Queued'
                         CONSTRAINT messages_status_check CHECK (status IN
                         ('Scheduled', 'Queued', 'Sent', 'Accepted', 'Delivered', 'Undelivered', 'Expired', 'Failed', 'Skipped', 'Cancelled')),
    provider             text,
    provider_message_id  text,
    -- Exact decimal text as the provider charged it ("0.8000"), and its currency.
    cost                 text,
    cost_currency        text,
    failure_reason       text,
    trigger_event        text,
    sent_by              uuid,
    bulk_send            boolean     NOT NULL DEFAULT false,
    -- A bulk send's recipients point at its parent message.
    parent               uuid        CONSTRAINT messages_parent_fkey REFERENCES messages (id) ON DELETE CASCADE,
    ticket               uuid        CONSTRAINT messages_ticket_fkey REFERENCES tickets (id) ON DELETE SET NULL,
    subscriber           uuid,
    contact              uuid,
    -- Bulk parents: Transactional | Promotional, the audience, counts, schedule.
    category             text,
    audience             jsonb,
    recipient_count      integer,
    scheduled_at         timestamptz,
    -- The event that caused an automated message: one per event, recipient, channel.
    source_event         uuid,
    -- Order of delivery reports (a late Sent never undoes Delivered).
    status_rank          integer     NOT NULL DEFAULT 0,
    status_at            timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_source_event_key UNIQUE (source_event, recipient, type),
    -- A number appears once per bulk send even if two subscribers share it.
    CONSTRAINT messages_parent_recipient_key UNIQUE (parent, recipient)
);
CREATE INDEX messages_ticket_idx ON messages (ticket);
CREATE INDEX messages_parent_status_idx ON messages (parent, status);
CREATE INDEX messages_trigger_idx ON messages (trigger_event);

-- Ticket statuses customers were last told about (ticket.updated notifies a change).
CREATE TABLE ticket_status_seen (
    ticket      uuid PRIMARY KEY,
    status      text        NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Numbers and addresses that asked not to get promotional messages.
CREATE TABLE suppressions (
    id          uuid PRIMARY KEY,
    -- E.164 number or lower-case email address.
    address     text        NOT NULL CONSTRAINT suppressions_address_key UNIQUE,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
