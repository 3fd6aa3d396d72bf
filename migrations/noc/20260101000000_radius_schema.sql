-- FreeRADIUS tables in the NOC-owned `radius` schema.
--
-- This is FreeRADIUS 3.2's stock PostgreSQL schema
-- (/etc/freeradius/3.0/mods-config/sql/main/postgresql/schema.sql): the same
-- tables, columns, defaults and indexes, with every table qualified in schema
-- `radius` (an index always lives in its table's schema, so index names cannot and
-- need not be qualified). Keep it identical to upstream: FreeRADIUS's shipped
-- queries (mods-config/sql/main/postgresql/queries.conf) name these columns.
--
-- Applied by sqlx's migrator as the NOC service's role `isp_noc`, which owns schema
-- `radius`; no superuser is needed. Platform provisioning creates beforehand:
--   - schema `radius` owned by `isp_noc`;
--   - role `isp_radius` (LOGIN, password from ISP_RADIUS_DATABASE_PASSWORD, default
--     'isp_radius'), with `ALTER ROLE isp_radius SET search_path = radius` and USAGE
--     on schema radius. FreeRADIUS logs in as isp_radius and finds the tables
--     through that search_path (its queries use unqualified names).
--
-- The NOC service writes radcheck/radreply/radusergroup/radgroupcheck/... and
-- reads radacct/radpostauth; FreeRADIUS gets only the grants at the end.
-- Identifiers are unquoted as upstream, so e.g. UserName is the column username.

/*
 * Accounting: one row per session (Accounting-Start, Interim-Update, Stop).
 */
CREATE TABLE radius.radacct (
	RadAcctId		bigserial PRIMARY KEY,
	AcctSessionId		text NOT NULL,
	AcctUniqueId		text NOT NULL UNIQUE,
	UserName		text,
	Realm			text,
	NASIPAddress		inet NOT NULL,
	NASPortId		text,
	NASPortType		text,
	AcctStartTime		timestamp with time zone,
	AcctUpdateTime		timestamp with time zone,
	AcctStopTime		timestamp with time zone,
	AcctInterval		bigint,
	AcctSessionTime		bigint,
	AcctAuthentic		text,
	ConnectInfo_start	text,
	ConnectInfo_stop	text,
	AcctInputOctets		bigint,
	AcctOutputOctets	bigint,
	CalledStationId		text,
	CallingStationId	text,
	AcctTerminateCause	text,
	ServiceType		text,
	FramedProtocol		text,
	FramedIPAddress		inet,
	FramedIPv6Address	inet,
	FramedIPv6Prefix	inet,
	FramedInterfaceId	text,
	DelegatedIPv6Prefix	inet,
	Class			text
);
-- For use by update-, stop- and simul_* queries
CREATE INDEX radacct_active_session_idx ON radius.radacct (AcctUniqueId) WHERE AcctStopTime IS NULL;
-- For use by onoff-
CREATE INDEX radacct_bulk_close ON radius.radacct (NASIPAddress, AcctStartTime) WHERE AcctStopTime IS NULL;
-- and for common statistic queries:
CREATE INDEX radacct_start_user_idx ON radius.radacct (AcctStartTime, UserName);
-- and for Class (the upstream name, typo included)
CREATE INDEX radacct_calss_idx ON radius.radacct (Class);

/*
 * Per-user check items, e.g. (user, Cleartext-Password, :=, secret).
 */
CREATE TABLE radius.radcheck (
	id			serial PRIMARY KEY,
	UserName		text NOT NULL DEFAULT '',
	Attribute		text NOT NULL DEFAULT '',
	op			VARCHAR(2) NOT NULL DEFAULT '==',
	Value			text NOT NULL DEFAULT ''
);
CREATE INDEX radcheck_UserName ON radius.radcheck (UserName, Attribute);

/*
 * Per-group check items, e.g. (suspended, Auth-Type, :=, Reject).
 */
CREATE TABLE radius.radgroupcheck (
	id			serial PRIMARY KEY,
	GroupName		text NOT NULL DEFAULT '',
	Attribute		text NOT NULL DEFAULT '',
	op			VARCHAR(2) NOT NULL DEFAULT '==',
	Value			text NOT NULL DEFAULT ''
);
CREATE INDEX radgroupcheck_GroupName ON radius.radgroupcheck (GroupName, Attribute);

/*
 * Per-group reply items.
 */
CREATE TABLE radius.radgroupreply (
	id			serial PRIMARY KEY,
	GroupName		text NOT NULL DEFAULT '',
	Attribute		text NOT NULL DEFAULT '',
	op			VARCHAR(2) NOT NULL DEFAULT '=',
	Value			text NOT NULL DEFAULT ''
);
CREATE INDEX radgroupreply_GroupName ON radius.radgroupreply (GroupName, Attribute);

/*
 * Per-user reply items, e.g. (user, Mikrotik-Rate-Limit, :=, 5M/10M) and
 * (user, Framed-IP-Address, :=, 10.0.0.5).
 */
CREATE TABLE radius.radreply (
	id			serial PRIMARY KEY,
	UserName		text NOT NULL DEFAULT '',
	Attribute		text NOT NULL DEFAULT '',
	op			VARCHAR(2) NOT NULL DEFAULT '=',
	Value			text NOT NULL DEFAULT ''
);
CREATE INDEX radreply_UserName ON radius.radreply (UserName, Attribute);

/*
 * Group membership, e.g. (user, suspended, 0).
 */
CREATE TABLE radius.radusergroup (
	id			serial PRIMARY KEY,
	UserName		text NOT NULL DEFAULT '',
	GroupName		text NOT NULL DEFAULT '',
	priority		integer NOT NULL DEFAULT 0
);
CREATE INDEX radusergroup_UserName ON radius.radusergroup (UserName);

/*
 * Post-auth log: one row per Access-Accept/Reject.
 */
CREATE TABLE radius.radpostauth (
	id			bigserial PRIMARY KEY,
	username		text NOT NULL,
	pass			text,
	reply			text,
	CalledStationId		text,
	CallingStationId	text,
	authdate		timestamp with time zone NOT NULL default now(),
	Class			text
);
CREATE INDEX radpostauth_username_idx ON radius.radpostauth (username);
CREATE INDEX radpostauth_class_idx ON radius.radpostauth (Class);

/*
 * NAS clients (read at FreeRADIUS start when read_clients = yes).
 */
CREATE TABLE radius.nas (
	id			serial PRIMARY KEY,
	nasname			text NOT NULL,
	shortname		text NOT NULL,
	type			text NOT NULL DEFAULT 'other',
	ports			integer,
	secret			text NOT NULL,
	server			text,
	community		text,
	description		text
);
CREATE INDEX nas_nasname ON radius.nas (nasname);

/*
 * NAS reload times ("lightweight" Accounting-On/Off strategy; read by the
 * simul_count/simul_verify queries).
 */
CREATE TABLE radius.nasreload (
	NASIPAddress		inet PRIMARY KEY,
	ReloadTime		timestamp with time zone NOT NULL
);

-- What FreeRADIUS (role isp_radius) may do, and nothing more:
-- read authorization data and NAS clients,
GRANT SELECT ON radius.radcheck, radius.radreply, radius.radgroupcheck,
	radius.radgroupreply, radius.radusergroup, radius.nas TO isp_radius;
-- read NAS reload times (the Simultaneous-Use check joins them, if `session { sql }`
-- is ever enabled; FreeRADIUS never writes them with the shipped accounting-on query),
GRANT SELECT ON radius.nasreload TO isp_radius;
-- write accounting and the post-auth log (upserts and updates need SELECT too),
GRANT SELECT, INSERT, UPDATE ON radius.radacct, radius.radpostauth TO isp_radius;
-- and draw ids for those inserts.
GRANT USAGE ON SEQUENCE radius.radacct_radacctid_seq, radius.radpostauth_id_seq TO isp_radius;
