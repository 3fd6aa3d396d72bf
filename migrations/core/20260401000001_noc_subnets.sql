-- Projection of the NOC's IPAM subnets (from ipSubnet.* events): a Static-Public
-- plan's staticIpPool must name one of them.
CREATE TABLE noc_subnets (
    id          uuid PRIMARY KEY,
    network     text        NOT NULL,
    deleted     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL
);
