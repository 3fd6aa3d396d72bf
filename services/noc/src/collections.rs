//! NOC's five collections (docs/contract.md#noc) and their rules.

use std::net::IpAddr;

use async_trait::async_trait;
use isp_events::payloads::*;
use isp_platform::auth::{Principal, Role, Roles};
use isp_platform::collection::{Change, Collection, Field, Hooks, Kind, Scope, SqlValue};
use isp_platform::openapi::WS;
use isp_platform::{ApiError, ApiResult, FieldError, ServiceContext};
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::provision;
use crate::radius;
use crate::secrets::SecretBox;

/// Who manages the network (docs/contract.md#roles: Network Engineer, and Admin).
pub const NETWORK: Roles = Roles::of(&[Role::Admin, Role::NetworkEngineer]);
const NETWORK_AND_SUPPORT: Roles =
    Roles::of(&[Role::Admin, Role::NetworkEngineer, Role::SupportAgent]);
const WORK_ORDER_READERS: Roles =
    Roles::of(&[Role::Admin, Role::NetworkEngineer, Role::Technician]);

pub const SUBSCRIBER_STATUS: &[&str] = isp_events::options::SubscriberStatus::ALL;
pub const CONNECTION_TYPES: &[&str] = isp_events::options::ConnectionType::ALL;
pub const RESOURCE_TYPES: &[&str] = isp_events::options::ResourceType::ALL;
pub const RESOURCE_STATUS: &[&str] = isp_events::options::ResourceStatus::ALL;
pub const IP_STATUS: &[&str] = &["Available", "Assigned", "Reserved"];
pub const ORDER_TYPES: &[&str] = &["New Installation", "Repair", "Site Survey"];
pub const ORDER_STATUS: &[&str] = &["Pending", "Scheduled", "In Progress", "Completed", "Failed"];

/// The largest subnet whose addresses we populate: a /20 (4094 usable hosts).
pub const MAX_SUBNET_ADDRESSES: u128 = 4096;

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::Internal(e)
}

fn doc_id(doc: &Value) -> ApiResult<Uuid> {
    isp_platform::collection::stored::uuid(doc, "id")
}

/// `aa-bb-cc-dd-ee-ff`, `AABB.CCDD.EEFF`, `aabbccddeeff` ... -> `AA:BB:CC:DD:EE:FF`.
pub fn normalize_mac(s: &str) -> Result<String, String> {
    let hex: String = s
        .trim()
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(
            "Must be a MAC address of 12 hexadecimal digits, e.g. AA:BB:CC:DD:EE:FF.".into(),
        );
    }
    let hex = hex.to_ascii_uppercase();
    Ok(hex
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn normalize_mac_field(c: &mut Change<'_>, field: &str) -> ApiResult<()> {
    if let Some(Value::String(m)) = c.data.get(field).cloned() {
        let n = normalize_mac(&m).map_err(|e| ApiError::field(field, e))?;
        c.data.insert(field.into(), json!(n));
    }
    Ok(())
}

// ---- subscribers (technical view) ---------------------------------------------

/// Billing owns the identity and status fields (read-only here, kept from its
/// events); NOC owns the technical ones. Subscribers are created only by
/// `subscriber.created`, never through this API.
pub fn subscribers(secrets: SecretBox) -> Collection {
    Collection::new(
        "noc",
        "subscribers",
        "subscribers",
        "Subscriber",
        vec![
            Field::new("firstName", "first_name", Kind::TEXT).system(),
            Field::new("lastName", "last_name", Kind::TEXT).system(),
            Field::new("accountNumber", "account_number", Kind::TEXT).system(),
            Field::new("contactPhone", "contact_phone", Kind::TEXT).system(),
            Field::new("status", "status", Kind::Select(SUBSCRIBER_STATUS)).system(),
            Field::new("servicePlan", "service_plan", Kind::Relation).system(),
            Field::new("addressNotes", "address_notes", Kind::TEXT_AREA).system(),
            Field::new(
                "connectionType",
                "connection_type",
                Kind::Select(CONNECTION_TYPES),
            )
            .required(),
            Field::new("radiusUsername", "radius_username", Kind::TEXT).system(),
            Field::new("radiusPassword", "radius_password", Kind::TEXT)
                .system()
                .read(NETWORK),
            Field::new("assignedIp", "assigned_ip", Kind::Relation),
            Field::new("macAddress", "mac_address", Kind::TEXT)
                .schema(serde_json::json!({"pattern": format!("^[{WS}]*[:.\\-]*([0-9A-Fa-f][:.\\-]*){{12}}[{WS}]*$"),
                    "description": "12 hexadecimal digits, any of : - . between them (AA:BB:CC:DD:EE:FF)"})),
            Field::new("router", "router", Kind::Relation),
            Field::new("provisionedAt", "provisioned_at", Kind::Timestamp).system(),
        ],
    )
    .access(NETWORK, Roles::NONE, NETWORK, Roles::NONE)
    .hooks(SubscriberHooks { secrets })
}

struct SubscriberHooks {
    secrets: SecretBox,
}

#[async_trait]
impl Hooks for SubscriberHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        normalize_mac_field(c, "macAddress")?;
        if c.changed("router") {
            if let Some(router) = c.uuid("router") {
                let kind: Option<String> =
                    sqlx::query_scalar("SELECT resource_type FROM resources WHERE id = $1")
                        .bind(router)
                        .fetch_optional(&mut *tx)
                        .await?;
                match kind.as_deref() {
                    None => return Err(ApiError::field("router", "No such resource.")),
                    Some("Router") => {}
                    Some(other) => {
                        return Err(ApiError::field(
                            "router",
                            format!("The resource is a {other}, not a Router."),
                        ))
                    }
                }
            }
        }
        if c.changed("assignedIp") || c.data.get("assignedIp").is_some_and(Value::is_null) {
            let sub = c.required_uuid("id")?;
            let old = c
                .existing
                .and_then(|e| e["assignedIp"].as_str())
                .and_then(|s| Uuid::parse_str(s).ok());
            let new = c
                .data
                .get("assignedIp")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            if old != new {
                if let Some(new) = new {
                    // An explicit Network Engineer assignment: Available or Reserved only.
                    let row: Option<(String,)> =
                        sqlx::query_as("SELECT status FROM ip_addresses WHERE id = $1 FOR UPDATE")
                            .bind(new)
                            .fetch_optional(&mut *tx)
                            .await?;
                    match row {
                        None => return Err(ApiError::field("assignedIp", "No such IP address.")),
                        Some((s,)) if s == "Assigned" => {
                            return Err(ApiError::conflict_field(
                                "assignedIp",
                                "This IP address is already assigned to another subscriber.",
                            ))
                        }
                        _ => {}
                    }
                }
                if let Some(old) = old {
                    provision::release_ip(tx, old).await?;
                }
                if let Some(new) = new {
                    sqlx::query(
                        "UPDATE ip_addresses SET status = 'Assigned', assigned_to = $2, updated_at = now() WHERE id = $1",
                    )
                    .bind(new)
                    .bind(sub)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn after_change(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        _p: &Principal,
        doc: &Value,
        previous: Option<&Value>,
    ) -> ApiResult<()> {
        let Some(prev) = previous else { return Ok(()) };
        let changed = |f: &str| prev[f] != doc[f];
        if !(changed("connectionType") || changed("assignedIp") || changed("router")) {
            return Ok(());
        }
        if changed("assignedIp") && !doc["provisionedAt"].is_null() {
            if let Some(user) = doc["radiusUsername"].as_str() {
                let ip = provision::ip_text(tx, doc["assignedIp"].as_str()).await?;
                radius::set_framed_ip(tx, user, ip.as_deref()).await?;
                // A session keeps the address it was given until it reconnects, so
                // open sessions are disconnected (as a plan move that changes the
                // address does); the NAS's answer is logged in dynauth_requests.
                radius::queue_for_open_sessions(tx, "Disconnect", doc_id(doc)?, user, None).await?;
            }
        }
        crate::events::network_updated(tx, ctx.name, doc_id(doc)?)
            .await
            .map_err(internal)?;
        Ok(())
    }

    fn present(&self, p: &Principal, doc: &mut Map<String, Value>) {
        let may_see = p.in_roles(NETWORK);
        match doc.get("radiusPassword").and_then(Value::as_str) {
            Some(ct) if may_see => {
                let plain = self.secrets.decrypt(ct).ok();
                doc.insert("radiusPassword".into(), json!(plain));
            }
            _ => {
                doc.remove("radiusPassword");
            }
        }
    }
}

// ---- resources ------------------------------------------------------------------

/// Network Engineers and Admin manage inventory; Support Agents may look (for
/// troubleshooting) but never see a router's RADIUS shared secret.
pub fn resources() -> Collection {
    Collection::new(
        "noc",
        "resources",
        "resources",
        "Resource",
        vec![
            Field::new("resourceName", "resource_name", Kind::TEXT).required(),
            Field::new(
                "resourceType",
                "resource_type",
                Kind::Select(RESOURCE_TYPES),
            )
            .required(),
            Field::new("serialNumber", "serial_number", Kind::TEXT),
            Field::new("macAddress", "mac_address", Kind::TEXT)
                .schema(serde_json::json!({"pattern": format!("^[{WS}]*[:.\\-]*([0-9A-Fa-f][:.\\-]*){{12}}[{WS}]*$"),
                    "description": "12 hexadecimal digits, any of : - . between them (AA:BB:CC:DD:EE:FF)"})),
            Field::new("status", "status", Kind::Select(RESOURCE_STATUS)).required(),
            Field::new("assignedTo", "assigned_to", Kind::Json),
            Field::new("location", "location", Kind::Relation),
            Field::new("managementIp", "management_ip", Kind::TEXT).schema(serde_json::json!({
                "anyOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}],
                "description": "The router's IP address (NAS)"})),
            Field::new("nasSecret", "nas_secret", Kind::Text { max: 128 }).read(NETWORK),
            Field::new(
                "dynauthPort",
                "dynauth_port",
                Kind::Int { min: 1, max: 65535 },
            ),
        ],
    )
    .access(NETWORK_AND_SUPPORT, NETWORK, NETWORK, NETWORK)
    .hooks(ResourceHooks)
    .publishes(ResourceCreated, ResourceUpdated, ResourceDeleted)
}

struct ResourceHooks;

#[async_trait]
impl Hooks for ResourceHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        let mut errors = vec![];
        if let Err(ApiError::BadRequest(e)) = normalize_mac_field(c, "macAddress") {
            errors.extend(e);
        }
        if let Some(Value::String(ip)) = c.data.get("managementIp").cloned() {
            match ip.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    c.data.insert("managementIp".into(), json!(ip.to_string()));
                }
                Err(_) => errors.push(FieldError::new(
                    "managementIp",
                    "Must be an IP address, e.g. 10.0.0.1.",
                )),
            }
        }
        if c.str("resourceType") != Some("Router") {
            for f in ["managementIp", "nasSecret", "dynauthPort"] {
                if c.value(f).is_some() {
                    errors.push(FieldError::new(f, "Only a Router has NAS settings."));
                }
            }
        }
        if let Some(v) = c.data.get("assignedTo").filter(|v| !v.is_null()).cloned() {
            match parse_assignee(&v) {
                Err(m) => errors.push(FieldError::new("assignedTo", m)),
                Ok((rel, id)) => {
                    let exists: bool = if rel == "subscribers" {
                        sqlx::query_scalar(
                            "SELECT EXISTS (SELECT 1 FROM subscribers WHERE id = $1)",
                        )
                    } else {
                        sqlx::query_scalar(
                            "SELECT EXISTS (SELECT 1 FROM buildings WHERE id = $1 AND NOT deleted)",
                        )
                    }
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                    if !exists {
                        errors.push(FieldError::new(
                            "assignedTo",
                            format!("No such {}.", rel.trim_end_matches('s')),
                        ));
                    } else {
                        c.data.insert(
                            "assignedTo".into(),
                            json!({"relationTo": rel, "value": id.to_string()}),
                        );
                    }
                }
            }
        }
        if c.changed("location") {
            if let Some(b) = c.uuid("location") {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM buildings WHERE id = $1 AND NOT deleted)",
                )
                .bind(b)
                .fetch_one(&mut *tx)
                .await?;
                if !exists {
                    errors.push(FieldError::new("location", "No such building."));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::BadRequest(errors))
        }
    }

    async fn after_change(
        &self,
        tx: &mut PgConnection,
        _ctx: &ServiceContext,
        _p: &Principal,
        doc: &Value,
        _previous: Option<&Value>,
    ) -> ApiResult<()> {
        sync_nas(tx, doc).await
    }

    async fn after_delete(
        &self,
        tx: &mut PgConnection,
        _ctx: &ServiceContext,
        doc: &Value,
    ) -> ApiResult<()> {
        sqlx::query("DELETE FROM radius.nas WHERE shortname = $1")
            .bind(doc_id(doc)?.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// `{relationTo: "subscribers"|"buildings", value: id}`.
fn parse_assignee(v: &Value) -> Result<(&'static str, Uuid), String> {
    let msg = "Must be {\"relationTo\": \"subscribers\" or \"buildings\", \"value\": id}.";
    let rel = match v.get("relationTo").and_then(Value::as_str) {
        Some("subscribers") => "subscribers",
        Some("buildings") => "buildings",
        _ => return Err(msg.into()),
    };
    let id = v
        .get("value")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or(msg)?;
    Ok((rel, id))
}

/// A Router with a management IP and a secret is a NAS client in `radius.nas`
/// (for FreeRADIUS's `read_clients`); the row is keyed by the resource id.
async fn sync_nas(tx: &mut PgConnection, doc: &Value) -> ApiResult<()> {
    let id = doc_id(doc)?.to_string();
    sqlx::query("DELETE FROM radius.nas WHERE shortname = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if let (Some("Router"), Some(ip), Some(secret)) = (
        doc["resourceType"].as_str(),
        doc["managementIp"].as_str(),
        doc["nasSecret"].as_str(),
    ) {
        sqlx::query(
            "INSERT INTO radius.nas (nasname, shortname, type, secret, description) VALUES ($1, $2, 'other', $3, $4)",
        )
        .bind(ip)
        .bind(&id)
        .bind(secret)
        .bind(doc["resourceName"].as_str())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

// ---- ipSubnets ------------------------------------------------------------------

pub fn ip_subnets() -> Collection {
    Collection::new(
        "noc",
        "ipSubnets",
        "ip_subnets",
        "IP subnet",
        vec![
            Field::new("network", "network", Kind::Text { max: 64 })
                .required()
                .immutable()
                .schema(serde_json::json!({
                    "pattern": format!("^[{WS}]*((25[0-5]|2[0-4][0-9]|1[0-9]{{2}}|[1-9]?[0-9])\\.){{3}}(25[0-5]|2[0-4][0-9]|1[0-9]{{2}}|[1-9]?[0-9])/(2[0-9]|3[0-2])[{WS}]*$"),
                    "description": "An IPv4 network in CIDR notation, /20 to /32 (10.30.20.0/24)"})),
            Field::new("description", "description", Kind::TEXT).required(),
        ],
    )
    .access(NETWORK, NETWORK, NETWORK, NETWORK)
    .hooks(SubnetHooks)
    .publishes(IpSubnetCreated, IpSubnetUpdated, IpSubnetDeleted)
}

/// Parses and normalizes a CIDR (host bits cleared), refusing IPv6 and what is
/// too large to populate address by address.
///
/// IPv4 only: an address from a pool reaches the NAS as Framed-IP-Address, which is
/// IPv4 (an IPv6 subscriber would need Framed-IPv6-Address or a delegated prefix,
/// which provisioning does not write), so an IPv6 subnet would be a pool whose
/// addresses RADIUS cannot hand out.
pub fn parse_subnet(s: &str) -> Result<ipnet::IpNet, String> {
    let net: ipnet::IpNet = s
        .trim()
        .parse()
        .map_err(|_| "Must be a network in CIDR notation, e.g. 10.30.20.0/24.".to_string())?;
    if let ipnet::IpNet::V6(_) = net {
        return Err(format!(
            "{net} is an IPv6 network: IPAM manages IPv4 subnets only, since static addresses reach the router as Framed-IP-Address (IPv4). Use an IPv4 network, e.g. 10.30.20.0/24."
        ));
    }
    let net = net.trunc();
    let host_bits = net.max_prefix_len() - net.prefix_len();
    if host_bits > 12 || (1u128 << host_bits) > MAX_SUBNET_ADDRESSES {
        let smallest_prefix = net.max_prefix_len() - 12;
        return Err(format!(
            "{net} is too large: NOC populates every usable address, and the largest subnet it manages is a /{smallest_prefix} ({} addresses). Split it into /{smallest_prefix} networks or smaller.",
            MAX_SUBNET_ADDRESSES
        ));
    }
    Ok(net)
}

/// Usable host addresses: IPv4 leaves out the network and broadcast addresses
/// (except /31 and /32); IPv6 (which `parse_subnet` refuses, kept correct anyway)
/// leaves out the subnet-router anycast address, which ipnet's `hosts()` includes.
pub fn usable_hosts(net: &ipnet::IpNet) -> Vec<String> {
    match net {
        ipnet::IpNet::V4(n) => n.hosts().map(|a| a.to_string()).collect(),
        ipnet::IpNet::V6(n) => n
            .hosts()
            .filter(|a| n.prefix_len() >= 127 || *a != n.network())
            .map(|a| a.to_string())
            .collect(),
    }
}

/// Why `ip`, inside `net`, is not a host address (the network or broadcast address
/// of an IPv4 subnet larger than /31, IPv6's subnet-router anycast address).
pub fn not_a_host(net: &ipnet::IpNet, ip: IpAddr) -> Option<String> {
    match net {
        ipnet::IpNet::V4(n) if n.prefix_len() < 31 => {
            if ip == IpAddr::V4(n.network()) {
                Some(format!(
                    "{ip} is the network address of {net}, not a host address."
                ))
            } else if ip == IpAddr::V4(n.broadcast()) {
                Some(format!(
                    "{ip} is the broadcast address of {net}, not a host address."
                ))
            } else {
                None
            }
        }
        ipnet::IpNet::V6(n) if n.prefix_len() < 127 && ip == IpAddr::V6(n.network()) => Some(
            format!("{ip} is the subnet-router anycast address of {net}, not a host address."),
        ),
        _ => None,
    }
}

struct SubnetHooks;

/// Serializes subnet creation so the overlap check cannot race.
const SUBNET_LOCK: i64 = 7_340_401;

#[async_trait]
impl Hooks for SubnetHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        if !c.create {
            return Ok(());
        }
        let Some(raw) = c.str("network").map(str::to_string) else {
            return Ok(());
        };
        let net = parse_subnet(&raw).map_err(|m| ApiError::field("network", m))?;
        c.data.insert("network".into(), json!(net.to_string()));
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SUBNET_LOCK)
            .execute(&mut *tx)
            .await?;
        let clash: Option<String> =
            sqlx::query_scalar("SELECT network FROM ip_subnets WHERE net && $1::cidr LIMIT 1")
                .bind(net.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(other) = clash {
            return Err(ApiError::conflict_field(
                "network",
                if other == net.to_string() {
                    format!("The subnet {other} already exists.")
                } else {
                    format!("{net} overlaps the existing subnet {other}.")
                },
            ));
        }
        Ok(())
    }

    async fn after_change(
        &self,
        tx: &mut PgConnection,
        _ctx: &ServiceContext,
        _p: &Principal,
        doc: &Value,
        previous: Option<&Value>,
    ) -> ApiResult<()> {
        if previous.is_some() {
            return Ok(());
        }
        let net = parse_subnet(doc["network"].as_str().unwrap_or_default())
            .map_err(|m| ApiError::field("network", m))?;
        sqlx::query(
            "INSERT INTO ip_addresses (id, ip_address, subnet, status)
             SELECT gen_random_uuid(), a, $2, 'Available' FROM unnest($1::text[]) AS a",
        )
        .bind(usable_hosts(&net))
        .bind(doc_id(doc)?)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn before_delete(
        &self,
        tx: &mut PgConnection,
        _p: &Principal,
        doc: &Value,
    ) -> ApiResult<()> {
        let id = doc_id(doc)?;
        let assigned: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ip_addresses WHERE subnet = $1 AND status = 'Assigned'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if assigned > 0 {
            return Err(ApiError::conflict(format!(
                "{assigned} address(es) of this subnet are assigned to subscribers; release them first."
            )));
        }
        let plan: Option<String> = sqlx::query_scalar(
            "SELECT name FROM plans WHERE static_ip_pool = $1 AND NOT deleted LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(plan) = plan {
            return Err(ApiError::conflict(format!(
                "The plan {plan:?} uses this subnet as its static IP pool."
            )));
        }
        Ok(())
    }
}

// ---- ipAddresses ----------------------------------------------------------------

/// Addresses are created with their subnet. A Network Engineer may add one inside a
/// subnet, reserve or free it; assignment happens only by provisioning or through
/// a subscriber's `assignedIp`, so an Assigned address always has its subscriber.
pub fn ip_addresses() -> Collection {
    Collection::new(
        "noc",
        "ipAddresses",
        "ip_addresses",
        "IP address",
        vec![
            Field::new("ipAddress", "ip_address", Kind::Text { max: 64 })
                .required()
                .immutable(),
            Field::new("subnet", "subnet", Kind::Relation)
                .required()
                .immutable(),
            Field::new("status", "status", Kind::Select(IP_STATUS))
                .required()
                .default_value(serde_json::json!("Available")),
            Field::new("assignedTo", "assigned_to", Kind::Relation).system(),
        ],
    )
    .access(NETWORK, NETWORK, NETWORK, NETWORK)
    .hooks(AddressHooks)
}

struct AddressHooks;

const ASSIGN_HINT: &str =
    "Addresses are assigned by provisioning or through the subscriber's assignedIp.";

#[async_trait]
impl Hooks for AddressHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        if c.create {
            let mut errors = vec![];
            let ip = c.str("ipAddress").map(|s| s.parse::<IpAddr>());
            if let Some(Err(_)) = ip {
                errors.push(FieldError::new("ipAddress", "Must be an IP address."));
            }
            if let (Some(Ok(ip)), Some(subnet)) = (ip, c.uuid("subnet")) {
                c.data.insert("ipAddress".into(), json!(ip.to_string()));
                let network: Option<String> =
                    sqlx::query_scalar("SELECT network FROM ip_subnets WHERE id = $1")
                        .bind(subnet)
                        .fetch_optional(&mut *tx)
                        .await?;
                match network.and_then(|n| n.parse::<ipnet::IpNet>().ok()) {
                    None => errors.push(FieldError::new("subnet", "No such subnet.")),
                    Some(net) if !net.contains(&ip) => errors.push(FieldError::new(
                        "ipAddress",
                        format!("{ip} is not inside the subnet {net}."),
                    )),
                    Some(net) => {
                        if let Some(why) = not_a_host(&net, ip) {
                            errors.push(FieldError::new("ipAddress", why));
                        }
                    }
                }
            }
            if c.str("status") == Some("Assigned") {
                errors.push(FieldError::new("status", ASSIGN_HINT));
            }
            return if errors.is_empty() {
                Ok(())
            } else {
                Err(ApiError::BadRequest(errors))
            };
        }
        if c.changed("status") {
            if c.existing.is_some_and(|e| e["status"] == "Assigned") {
                return Err(ApiError::conflict_field(
                    "status",
                    format!("This address is assigned to a subscriber. {ASSIGN_HINT}"),
                ));
            }
            if c.str("status") == Some("Assigned") {
                return Err(ApiError::field("status", ASSIGN_HINT));
            }
        }
        Ok(())
    }

    async fn before_delete(
        &self,
        _tx: &mut PgConnection,
        _p: &Principal,
        doc: &Value,
    ) -> ApiResult<()> {
        if doc["status"] == "Assigned" {
            return Err(ApiError::conflict(format!(
                "This address is assigned to a subscriber. {ASSIGN_HINT}"
            )));
        }
        Ok(())
    }
}

// ---- workOrders -----------------------------------------------------------------

/// Network Engineers and Admin manage all orders; a Technician sees only orders
/// assigned to them and may change only their status.
pub fn work_orders(secrets: SecretBox) -> Collection {
    let techs = WORK_ORDER_READERS;
    Collection::new(
        "noc",
        "workOrders",
        "work_orders",
        "Work order",
        vec![
            Field::new("orderType", "order_type", Kind::Select(ORDER_TYPES))
                .required()
                .write(NETWORK),
            Field::new("subscriber", "subscriber", Kind::Relation)
                .required()
                .immutable()
                .write(NETWORK),
            Field::new("status", "status", Kind::Select(ORDER_STATUS))
                .required()
                .default_value(serde_json::json!("Pending"))
                .write(techs),
            Field::new("assignedTo", "assigned_to", Kind::Relation).write(NETWORK),
            Field::new("notes", "notes", Kind::RICH_TEXT).write(NETWORK),
            Field::new("subscriberName", "subscriber_name", Kind::TEXT).system(),
            Field::new("subscriberPhone", "subscriber_phone", Kind::TEXT).system(),
            Field::new("addressNotes", "address_notes", Kind::TEXT_AREA).system(),
            Field::new("completedAt", "completed_at", Kind::Timestamp).system(),
        ],
    )
    .access(techs, NETWORK, techs, NETWORK)
    .hooks(WorkOrderHooks { secrets })
}

struct WorkOrderHooks {
    secrets: SecretBox,
}

#[async_trait]
impl Hooks for WorkOrderHooks {
    fn scope(&self, p: &Principal) -> Scope {
        match p {
            Principal::Staff {
                role: Role::Technician,
                id,
                ..
            } => Scope::Eq("assigned_to", SqlValue::Uuid(Some(*id))),
            _ => Scope::All,
        }
    }

    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        if c.create {
            if c.str("status") == Some("Completed") {
                // Provisioning happens when an installation is completed; an order
                // born Completed would skip it.
                if c.str("orderType") == Some("New Installation") {
                    return Err(ApiError::field(
                        "status",
                        "A New Installation order cannot be created Completed: create it, then set its status to Completed, which provisions the subscriber.",
                    ));
                }
                c.data.insert(
                    "completedAt".into(),
                    json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                );
            }
            if let Some(sub) = c.uuid("subscriber") {
                let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT first_name || ' ' || last_name, contact_phone, address_notes FROM subscribers WHERE id = $1",
                )
                .bind(sub)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((name, phone, notes)) = row else {
                    return Err(ApiError::field("subscriber", "No such subscriber."));
                };
                c.data.insert("subscriberName".into(), json!(name));
                c.data.insert("subscriberPhone".into(), json!(phone));
                c.data.insert("addressNotes".into(), json!(notes));
            }
        }
        if c.changed("assignedTo") {
            if let Some(staff) = c.uuid("assignedTo") {
                let row: Option<(String, String)> =
                    sqlx::query_as("SELECT role, status FROM staff WHERE id = $1")
                        .bind(staff)
                        .fetch_optional(&mut *tx)
                        .await?;
                match row {
                    Some((role, status))
                        if role == "Technician"
                            && status == isp_events::options::StaffStatus::Active => {}
                    Some((role, _)) if role != "Technician" => {
                        return Err(ApiError::field(
                            "assignedTo",
                            format!(
                                "Work orders go to Technicians; this staff member is a {role}."
                            ),
                        ))
                    }
                    Some(_) => {
                        return Err(ApiError::field(
                            "assignedTo",
                            "This Technician is not Active.",
                        ))
                    }
                    None => return Err(ApiError::field("assignedTo", "No such staff member.")),
                }
            }
        }
        if !c.create
            && c.changed("orderType")
            && c.existing.is_some_and(|e| e["status"] == "Completed")
        {
            // Turning a completed order into a New Installation would never provision.
            return Err(ApiError::conflict_field(
                "orderType",
                "A completed work order's type cannot be changed; open a new order instead.",
            ));
        }
        if !c.create && c.changed("status") {
            if c.existing.is_some_and(|e| e["status"] == "Completed") {
                return Err(ApiError::conflict_field(
                    "status",
                    "A completed work order cannot be reopened; open a Repair order instead.",
                ));
            }
            if c.str("status") == Some("Completed") {
                c.data.insert(
                    "completedAt".into(),
                    json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                );
                if c.str("orderType") == Some("New Installation") {
                    let sub = c.required_uuid("subscriber")?;
                    provision::provision(tx, c.ctx.name, &self.secrets, sub).await?;
                }
            }
        }
        Ok(())
    }
}

pub fn doc_uuid(doc: &Value, field: &str) -> Option<Uuid> {
    doc[field].as_str().and_then(|s| Uuid::parse_str(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_normalized() {
        assert_eq!(
            normalize_mac("aa-bb-cc-dd-ee-0f").unwrap(),
            "AA:BB:CC:DD:EE:0F"
        );
        assert_eq!(
            normalize_mac("AABB.CCDD.EEFF").unwrap(),
            "AA:BB:CC:DD:EE:FF"
        );
        assert_eq!(normalize_mac("aabbccddeeff").unwrap(), "AA:BB:CC:DD:EE:FF");
        assert!(normalize_mac("aa:bb:cc:dd:ee").is_err());
        assert!(normalize_mac("zz:bb:cc:dd:ee:ff").is_err());
    }

    #[test]
    fn subnets_are_normalized_and_bounded() {
        assert_eq!(
            parse_subnet("10.30.20.7/24").unwrap().to_string(),
            "10.30.20.0/24"
        );
        assert!(parse_subnet("10.30.20.0/20").is_ok());
        let e = parse_subnet("10.0.0.0/19").unwrap_err();
        assert!(e.contains("too large") && e.contains("/20"), "{e}");
        assert!(parse_subnet("10.30.20.0").is_err());
        assert!(parse_subnet("10.30.20.0/33").is_err());
        assert_eq!(
            usable_hosts(&parse_subnet("192.0.2.0/30").unwrap()),
            vec!["192.0.2.1", "192.0.2.2"]
        );
        assert_eq!(
            usable_hosts(&parse_subnet("192.0.2.0/24").unwrap()).len(),
            254
        );
        let e = parse_subnet("2001:db8::/120").unwrap_err();
        assert!(e.contains("IPv6") && e.contains("IPv4"), "{e}");
        assert!(parse_subnet("2001:db8::/64").is_err());
        assert_eq!(
            usable_hosts(&parse_subnet("192.0.2.0/31").unwrap()),
            vec!["192.0.2.0", "192.0.2.1"]
        );
    }

    #[test]
    fn ipv6_hosts_leave_out_the_subnet_router_anycast_address() {
        let net: ipnet::IpNet = "2001:db8::/126".parse().unwrap();
        assert_eq!(
            usable_hosts(&net),
            vec!["2001:db8::1", "2001:db8::2", "2001:db8::3"]
        );
        let p2p: ipnet::IpNet = "2001:db8::/127".parse().unwrap();
        assert_eq!(usable_hosts(&p2p).len(), 2, "RFC 6164 point-to-point");
    }

    #[test]
    fn network_and_broadcast_addresses_are_not_hosts() {
        let net = parse_subnet("10.30.20.0/24").unwrap();
        let why = |ip: &str| not_a_host(&net, ip.parse().unwrap());
        assert!(why("10.30.20.0").unwrap().contains("network address"));
        assert!(why("10.30.20.255").unwrap().contains("broadcast address"));
        assert_eq!(why("10.30.20.1"), None);
        assert_eq!(why("10.30.20.254"), None);
        let p2p = parse_subnet("10.0.0.0/31").unwrap();
        assert_eq!(not_a_host(&p2p, "10.0.0.0".parse().unwrap()), None);
        let v6: ipnet::IpNet = "2001:db8::/120".parse().unwrap();
        assert!(not_a_host(&v6, "2001:db8::".parse().unwrap()).is_some());
    }
}
