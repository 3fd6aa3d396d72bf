-- Core owns staff, so its `staff_access` (the table every service's shared token
-- check reads, created by the event-table migrations) is not a projection of events
-- but a view of the staff table itself: a logout, password, role or status change
-- (each bumps token_version) and a deletion (no row) end the member's tokens at
-- core the moment they commit.
DROP TABLE IF EXISTS staff_access;
CREATE VIEW staff_access AS
    SELECT id AS staff_id, token_version, status = 'Active' AS active, updated_at
    FROM staff;
