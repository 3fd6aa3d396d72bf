-- Who may still use a staff token, per service (DESIGN section 3): a tiny
-- projection of core's staff.* events, fed by the consumer every service starts
-- (isp_platform::staff_access). The shared Principal extractor refuses a staff
-- token whose `ver` claim is older than token_version here, or whose staff member
-- is not active. Core, which owns staff, replaces this table with a view of its own
-- staff table (migrations/core).
CREATE TABLE IF NOT EXISTS staff_access (
    staff_id       uuid PRIMARY KEY,
    -- Highest token version seen (logout, password, role and status changes bump it).
    token_version  integer     NOT NULL DEFAULT 0,
    active         boolean     NOT NULL,
    -- The snapshot's updatedAt: a stale event never flips `active` back.
    updated_at     timestamptz NOT NULL
);
