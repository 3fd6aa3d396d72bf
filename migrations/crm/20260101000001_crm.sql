-- CRM & Sales (SPEC 3.2): buildings, building units, leads, plus read-only
-- projections of Core's partners and NOC's resources (fed by events; CRM never
-- reads another service's schema).
-- Constraint names follow Postgres' <table>_<column>_<kind> pattern: the API maps
-- them back to the field in its 400/409 answers.

-- Projection of Core's partners (partner.created/updated/deleted). `updated_at` is
-- the snapshot's: older snapshots arriving late are ignored.
CREATE TABLE partners (
    id            uuid PRIMARY KEY,
    full_name     text        NOT NULL,
    phone_number  text        NOT NULL,
    status        text        NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL
);

-- Projection of NOC's resources (resource.created/updated/deleted); `location` is
-- the building the resource sits in. Feeds buildings.equipment.
CREATE TABLE resources (
    id             uuid PRIMARY KEY,
    resource_name  text        NOT NULL,
    resource_type  text        NOT NULL,
    status         text        NOT NULL,
    location       uuid,
    deleted        boolean     NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX resources_location_idx ON resources (location) WHERE NOT deleted;

CREATE TABLE buildings (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    address     text        NOT NULL,
    status      text        NOT NULL CONSTRAINT buildings_status_check
                CHECK (status IN ('Prospecting', 'Negotiating', 'Active', 'Lost')),
    -- A Core partner (the caretaker), checked against the partners projection.
    partner     uuid,
    -- [longitude, latitude]
    location    jsonb,
    -- Read-only: ids of NOC resources located here, kept by the resource consumer.
    equipment   uuid[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE building_units (
    id                       uuid PRIMARY KEY,
    unit_number              text        NOT NULL,
    -- A unit cannot outlive its building: deleting a building with units is a 409.
    building                 uuid        NOT NULL CONSTRAINT building_units_building_fkey REFERENCES buildings (id),
    status                   text        NOT NULL CONSTRAINT building_units_status_check
                             CHECK (status IN ('Vacant', 'Occupied', 'Lead', 'Subscriber')),
    current_provider         text,
    competitor_payment_date  date,
    current_issues           text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
-- "Apt 3B" and "apt 3b" are the same door.
CREATE UNIQUE INDEX building_units_unit_number_key ON building_units (building, lower(unit_number));

CREATE TABLE leads (
    id                uuid PRIMARY KEY,
    status            text        NOT NULL DEFAULT 'New' CONSTRAINT leads_status_check
                      CHECK (status IN ('New', 'Contacted', 'Site Survey', 'Converted', 'Lost')),
    lead_source       text        NOT NULL CONSTRAINT leads_lead_source_check
                      CHECK (lead_source IN ('Partner Referral', 'Website', 'Direct Call')),
    -- A Core partner; required exactly for Partner Referral leads.
    referred_by       uuid,
    subscriber_name   text        NOT NULL,
    -- E.164
    subscriber_phone  text        NOT NULL,
    service_location  uuid        NOT NULL CONSTRAINT leads_service_location_fkey REFERENCES building_units (id),
    notes             text,
    -- Set by the conversion: the Billing subscriber this lead became.
    subscriber        uuid,
    converted_at      timestamptz,
    -- Billing's answer to the conversion (basic subscriber info and the first
    -- invoice's summary), so a repeated convert answers the same without calling
    -- Billing again.
    conversion        jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT leads_referred_by_check CHECK ((lead_source = 'Partner Referral') = (referred_by IS NOT NULL)),
    CONSTRAINT leads_subscriber_check CHECK ((status = 'Converted') = (subscriber IS NOT NULL))
);
CREATE INDEX leads_service_location_idx ON leads (service_location);
CREATE INDEX leads_referred_by_idx ON leads (referred_by);
