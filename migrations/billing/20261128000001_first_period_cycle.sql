-- The billing cycle the first invoice was priced for, fixed at creation. Activation
-- starts the first period with it, so changing billingCycle before installation
-- never stretches a paid month into a quarter (the new cycle applies from the
-- next period). NULL for subscribers created before: their billing_cycle is used.
ALTER TABLE subscribers ADD COLUMN first_period_cycle text;
