-- NOC (SPEC 3.4): projections of other services' data, the technical subscriber
-- view, inventory, IPAM, work orders and the RFC 5176 request log. Tables live in
-- schema `noc` (the role's search_path); FreeRADIUS's tables are in `radius`.
-- Constraint names follow Postgres' <table>_<column>_<kind> pattern so the API can
-- name the field in its 400/409 answers.

-- ---- projections (read-only copies fed by events) ------------------------------

-- Core's plans: speeds for the rate limit, the static IP pool.
CREATE TABLE plans (
    id                  uuid PRIMARY KEY,
    name                text        NOT NULL,
    download_speed      integer     NOT NULL,
    upload_speed        integer     NOT NULL,
    ip_assignment_type  text        NOT NULL,
    static_ip_pool      uuid,
    deleted             boolean     NOT NULL DEFAULT false,
    updated_at          timestamptz NOT NULL
);

-- Core's staff: work orders are assigned to Active Technicians only.
CREATE TABLE staff (
    id          uuid PRIMARY KEY,
    full_name   text        NOT NULL,
    role        text        NOT NULL,
    status      text        NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- CRM's buildings: resource locations and assignments.
CREATE TABLE buildings (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    deleted     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL
);

-- ---- inventory --------------------------------------------------------------------

CREATE TABLE resources (
    id              uuid PRIMARY KEY,
    resource_name   text        NOT NULL,
    resource_type   text        NOT NULL CONSTRAINT resources_resource_type_check
                    CHECK (resource_type IN ('Router', 'Antenna', 'Switch', 'Cable')),
    serial_number   text        CONSTRAINT resources_serial_number_key UNIQUE,
    -- Normalized AA:BB:CC:DD:EE:FF before the unique check.
    mac_address     text        CONSTRAINT resources_mac_address_key UNIQUE,
    status          text        NOT NULL CONSTRAINT resources_status_check
                    CHECK (status IN ('In Stock', 'Deployed', 'Faulty', 'Retired')),
    -- {"relationTo": "subscribers"|"buildings", "value": "<uuid>"}
    assigned_to     jsonb,
    location        uuid,
    -- Router as a NAS: where Disconnect/CoA requests go and the shared secret.
    management_ip   text,
    nas_secret      text,
    dynauth_port    integer     CONSTRAINT resources_dynauth_port_check CHECK (dynauth_port BETWEEN 1 AND 65535),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX resources_management_ip_idx ON resources (management_ip) WHERE resource_type = 'Router';

-- ---- IPAM -------------------------------------------------------------------------

CREATE TABLE ip_subnets (
    id           uuid PRIMARY KEY,
    -- Normalized CIDR text, e.g. 10.30.20.0/24.
    network      text        NOT NULL CONSTRAINT ip_subnets_network_key UNIQUE,
    net          cidr        GENERATED ALWAYS AS (network::cidr) STORED,
    description  text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- No two subnets overlap (the API also checks, under a lock, to answer 409).
    CONSTRAINT ip_subnets_network_excl EXCLUDE USING gist (net inet_ops WITH &&)
);

CREATE TABLE subscribers (
    -- Billing's subscriber id.
    id                  uuid PRIMARY KEY,
    -- Billing-owned, read-only projection.
    first_name          text        NOT NULL,
    last_name           text        NOT NULL,
    account_number      text        NOT NULL,
    contact_phone       text,
    status              text        NOT NULL,
    service_plan        uuid        NOT NULL,
    address_notes       text,
    building            uuid,
    billing_updated_at  timestamptz NOT NULL,
    -- NOC-owned.
    connection_type     text        NOT NULL DEFAULT 'PPPoE' CONSTRAINT subscribers_connection_type_check
                        CHECK (connection_type IN ('PPPoE', 'IPoE/DHCP', 'Static IP', 'Hotspot')),
    radius_username     text        NOT NULL CONSTRAINT subscribers_radius_username_key UNIQUE,
    -- base64(nonce || ChaCha20-Poly1305 ciphertext); the cleartext exists only in
    -- radius.radcheck, which FreeRADIUS must read.
    radius_password     text        NOT NULL,
    assigned_ip         uuid,
    mac_address         text        CONSTRAINT subscribers_mac_address_key UNIQUE,
    router              uuid        CONSTRAINT subscribers_router_fkey REFERENCES resources (id),
    provisioned_at      timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ip_addresses (
    id           uuid PRIMARY KEY,
    ip_address   text        NOT NULL CONSTRAINT ip_addresses_ip_address_key UNIQUE,
    subnet       uuid        NOT NULL CONSTRAINT ip_addresses_subnet_fkey REFERENCES ip_subnets (id) ON DELETE CASCADE,
    status       text        NOT NULL DEFAULT 'Available' CONSTRAINT ip_addresses_status_check
                 CHECK (status IN ('Available', 'Assigned', 'Reserved')),
    assigned_to  uuid        CONSTRAINT ip_addresses_assigned_to_fkey REFERENCES subscribers (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- An Assigned address always names its subscriber, and only an Assigned one does.
    CONSTRAINT ip_addresses_assigned_to_check CHECK ((status = 'Assigned') = (assigned_to IS NOT NULL))
);
CREATE INDEX ip_addresses_available_idx ON ip_addresses (subnet, (ip_address::inet)) WHERE status = 'Available';
-- One address per subscriber.
CREATE UNIQUE INDEX ip_addresses_assigned_to_key ON ip_addresses (assigned_to) WHERE assigned_to IS NOT NULL;

ALTER TABLE subscribers ADD CONSTRAINT subscribers_assigned_ip_fkey
    FOREIGN KEY (assigned_ip) REFERENCES ip_addresses (id) DEFERRABLE INITIALLY DEFERRED;
CREATE UNIQUE INDEX subscribers_assigned_ip_key ON subscribers (assigned_ip) WHERE assigned_ip IS NOT NULL;

-- ---- work orders ------------------------------------------------------------------

CREATE TABLE work_orders (
    id                uuid PRIMARY KEY,
    order_type        text        NOT NULL CONSTRAINT work_orders_order_type_check
                      CHECK (order_type IN ('New Installation', 'Repair', 'Site Survey')),
    subscriber        uuid        NOT NULL CONSTRAINT work_orders_subscriber_fkey REFERENCES subscribers (id),
    status            text        NOT NULL DEFAULT 'Pending' CONSTRAINT work_orders_status_check
                      CHECK (status IN ('Pending', 'Scheduled', 'In Progress', 'Completed', 'Failed')),
    assigned_to       uuid,
    notes             text,
    -- What a Technician sees of the subscriber (kept current by the Billing consumer).
    subscriber_name   text,
    subscriber_phone  text,
    address_notes     text,
    -- Opened by subscriber.created (at most one per subscriber).
    automatic         boolean     NOT NULL DEFAULT false,
    completed_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX work_orders_automatic_key ON work_orders (subscriber) WHERE automatic;
CREATE INDEX work_orders_assigned_to_idx ON work_orders (assigned_to);

-- ---- RFC 5176 Disconnect / CoA requests -------------------------------------------

-- Queued in the transaction that decides them (suspension, plan change), sent by a
-- background worker after commit, with the NAS's answer recorded.
CREATE TABLE dynauth_requests (
    id               bigserial PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('Disconnect', 'CoA')),
    subscriber       uuid        NOT NULL,
    username         text        NOT NULL,
    acct_session_id  text        NOT NULL,
    nas_ip           text        NOT NULL,
    -- CoA only: the new Mikrotik-Rate-Limit.
    rate_limit       text,
    -- Pending until sent; then ACK, NAK, Timeout or Error.
    result           text        NOT NULL DEFAULT 'Pending' CHECK (result IN ('Pending', 'ACK', 'NAK', 'Timeout', 'Error')),
    error_cause      integer,
    detail           text,
    attempts         integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);
CREATE INDEX dynauth_requests_pending_idx ON dynauth_requests (id) WHERE result = 'Pending';

-- ---- Zabbix -----------------------------------------------------------------------

-- One network.problem / network.recovered per Zabbix event, however often posted.
CREATE TABLE zabbix_events (
    event_key    text PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- ---- FreeRADIUS group for suspended subscribers -------------------------------------

INSERT INTO radius.radgroupcheck (GroupName, Attribute, op, Value)
VALUES ('suspended', 'Auth-Type', ':=', 'Reject');
