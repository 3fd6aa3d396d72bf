-- The caretaker a CRM building names (building.partner). Core keeps
-- partners.buildings in step with it: setting a building's partner in CRM lists the
-- building on that partner, moving it takes it off the previous one. Staff may
-- still link buildings by hand in Core.
ALTER TABLE crm_buildings ADD COLUMN partner uuid;
