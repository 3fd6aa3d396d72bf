-- Core: staff (the auth collection), plans, partners (SPEC 3.1).
-- Constraint names follow Postgres' <table>_<column>_<kind> pattern: the API maps
-- them back to the field in its 400/409 answers.

CREATE TABLE staff (
    id              uuid PRIMARY KEY,
    full_name       text        NOT NULL,
    email           text        NOT NULL,
    password_hash   text        NOT NULL,
    role            text        NOT NULL CONSTRAINT staff_role_check
                    CHECK (role IN ('Admin', 'Sales Agent', 'Billing Manager', 'Network Engineer', 'Technician', 'Support Agent')),
    status          text        NOT NULL DEFAULT 'Active' CONSTRAINT staff_status_check CHECK (status IN ('Active', 'Inactive')),
    phone_number    text,
    -- Payload's maxLoginAttempts / lockTime.
    login_attempts  integer     NOT NULL DEFAULT 0,
    lock_until      timestamptz,
    -- Bumped on logout, password, role or status change: older tokens stop working at core.
    token_version   integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Case-insensitive uniqueness; the API also stores emails lower-cased.
CREATE UNIQUE INDEX staff_email_key ON staff (lower(email));

CREATE TABLE plans (
    id                      uuid PRIMARY KEY,
    name                    text          NOT NULL,
    download_speed          integer       NOT NULL CONSTRAINT plans_download_speed_check CHECK (download_speed > 0),
    upload_speed            integer       NOT NULL CONSTRAINT plans_upload_speed_check CHECK (upload_speed > 0),
    price                   numeric(14,2) NOT NULL CONSTRAINT plans_price_check CHECK (price > 0),
    billing_cycle           text          NOT NULL CONSTRAINT plans_billing_cycle_check CHECK (billing_cycle IN ('Monthly', 'Quarterly')),
    notes                   text,
    plan_enabled            boolean       NOT NULL DEFAULT true,
    active_for_new_signups  boolean       NOT NULL DEFAULT true,
    ip_assignment_type      text          NOT NULL DEFAULT 'Dynamic'
                            CONSTRAINT plans_ip_assignment_type_check CHECK (ip_assignment_type IN ('Dynamic', 'Static-Public')),
    -- A NOC ipSubnet; required exactly when the plan hands out static public IPs.
    static_ip_pool          uuid,
    created_at              timestamptz   NOT NULL DEFAULT now(),
    updated_at              timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT plans_static_ip_pool_check CHECK ((ip_assignment_type = 'Static-Public') = (static_ip_pool IS NOT NULL))
);
CREATE UNIQUE INDEX plans_name_key ON plans (lower(name));

CREATE TABLE partners (
    id               uuid PRIMARY KEY,
    full_name        text          NOT NULL,
    -- E.164; identifies the sender of lead messages.
    phone_number     text          NOT NULL CONSTRAINT partners_phone_number_key UNIQUE,
    mpesa_number     text          NOT NULL,
    status           text          NOT NULL CONSTRAINT partners_status_check CHECK (status IN ('Prospect', 'Active', 'Inactive')),
    -- CRM buildings this partner looks after.
    buildings        uuid[]        NOT NULL DEFAULT '{}',
    commission_rate  numeric(14,2) NOT NULL DEFAULT 1500 CONSTRAINT partners_commission_rate_check CHECK (commission_rate >= 0),
    referral_count   integer       NOT NULL DEFAULT 0,
    perks            boolean       NOT NULL DEFAULT false,
    created_at       timestamptz   NOT NULL DEFAULT now(),
    updated_at       timestamptz   NOT NULL DEFAULT now()
);

-- One row per converted lead: what makes the referral count exact even if CRM
-- publishes lead.converted twice for one lead.
CREATE TABLE partner_referrals (
    lead_id        uuid PRIMARY KEY,
    partner_id     uuid        NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    subscriber_id  uuid        NOT NULL,
    counted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX partner_referrals_partner_idx ON partner_referrals (partner_id);

-- Projection of CRM's buildings (from building.* events) to check partner.buildings.
CREATE TABLE crm_buildings (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    deleted     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL
);
