-- What Admin reads at /api/notify/deliveries: the deliveries with the cost as
-- exact text (a numeric in JSON would come out as a float).
CREATE VIEW delivery_log AS
SELECT d.*, d.cost::text AS cost_text
FROM deliveries d;
