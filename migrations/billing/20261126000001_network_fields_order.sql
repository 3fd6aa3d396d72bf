-- When NOC made the change Billing last mirrored into connection_type/assigned_ip
-- (subscriber.provisioned's and subscriber.network_updated's `at`): an older event
-- arriving late must not bring back a released address.
ALTER TABLE subscribers ADD COLUMN network_updated_at timestamptz;
