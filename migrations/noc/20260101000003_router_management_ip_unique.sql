-- A Router's management IP identifies it as a NAS: the dynauth worker finds the
-- shared secret for a session's NAS-IP-Address by it, and radius.nas gets one
-- client row per Router. Two Routers with one IP made that choice arbitrary, so
-- the IP is unique among Routers (the API answers 409 naming managementIp; the
-- constraint name follows the <table>_<column>_key pattern for that).
DO $$
DECLARE
    dup text;
BEGIN
    SELECT management_ip INTO dup FROM resources
    WHERE resource_type = 'Router' AND management_ip IS NOT NULL
    GROUP BY management_ip HAVING count(*) > 1 LIMIT 1;
    IF dup IS NOT NULL THEN
        RAISE EXCEPTION 'Several Router resources have the management IP %; give each Router its own management IP (or clear it on the spare ones), then start the NOC again.', dup;
    END IF;
END
$$;

DROP INDEX resources_management_ip_idx;
CREATE UNIQUE INDEX resources_management_ip_key ON resources (management_ip) WHERE resource_type = 'Router';
