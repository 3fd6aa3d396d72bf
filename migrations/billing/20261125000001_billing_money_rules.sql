-- Money-correctness rules (docs/billing.md): period prices follow the plan's
-- billing cycle, suspensions record why, and the run log counts subscribers it
-- could not bill.

-- Months in a billing cycle (the same mapping add_cycle uses).
CREATE FUNCTION cycle_months(cycle text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE cycle WHEN 'Quarterly' THEN 3 ELSE 1 END
$$;

-- What one subscriber period costs: a plan's price is for the plan's billing
-- cycle, so a period of the subscriber's cycle costs
-- price * months(subscriber cycle) / months(plan cycle), rounded to cents half-up
-- (round() on numeric rounds halves away from zero; prices are never negative).
-- Monthly plan 2500, Quarterly subscriber: 7500.00; Quarterly plan 7000, Monthly
-- subscriber: 2333.33.
CREATE FUNCTION period_price(price numeric, plan_cycle text, subscriber_cycle text) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT round(price * cycle_months(subscriber_cycle) / cycle_months(plan_cycle), 2)
$$;

-- Why a Suspended subscriber is suspended: 'Non-payment' (the daily run) or
-- 'Manual' (Admin / Billing Manager). Payments reactivate only the former.
ALTER TABLE subscribers ADD COLUMN suspension_reason text
    CONSTRAINT subscribers_suspension_reason_check CHECK (suspension_reason IN ('Non-payment', 'Manual'));
-- Until now every suspension was lifted by a payment: keep that for existing ones.
UPDATE subscribers SET suspension_reason = 'Non-payment' WHERE status = 'Suspended';

-- Active subscribers due for billing that a run skipped because their plan is
-- unknown to Billing (no plan.* event seen yet): counted, never silently.
ALTER TABLE daily_runs ADD COLUMN skipped_unknown_plan integer NOT NULL DEFAULT 0;
