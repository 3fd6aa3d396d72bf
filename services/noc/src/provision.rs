//! Provisioning (docs/contract.md#noc, flow 3): static IP allocation and the RADIUS account,
//! all inside the transaction that completes the installation order, so a full
//! pool or any failure leaves nothing half-done.

use isp_events::outbox::enqueue;
use isp_events::payloads::SubscriberProvisioned;
use isp_platform::{ApiError, ApiResult};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::radius;
use crate::secrets::SecretBox;

#[derive(sqlx::FromRow)]
struct Sub {
    radius_username: String,
    radius_password: String,
    service_plan: Uuid,
    assigned_ip: Option<Uuid>,
    connection_type: isp_events::options::ConnectionType,
    status: isp_events::options::SubscriberStatus,
}

#[derive(sqlx::FromRow)]
pub struct Plan {
    pub name: String,
    pub download_speed: i32,
    pub upload_speed: i32,
    pub ip_assignment_type: String,
    pub static_ip_pool: Option<Uuid>,
}

pub async fn plan(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Plan>> {
    sqlx::query_as(
        "SELECT name, download_speed, upload_speed, ip_assignment_type, static_ip_pool FROM plans WHERE id = $1 AND NOT deleted",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
}

/// The dotted address of an ipAddresses id.
pub async fn ip_text(tx: &mut PgConnection, id: Option<&str>) -> ApiResult<Option<String>> {
    let Some(id) = id.and_then(|s| Uuid::parse_str(s).ok()) else {
        return Ok(None);
    };
    Ok(
        sqlx::query_scalar("SELECT ip_address FROM ip_addresses WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?,
    )
}

/// Frees an address: Available again, linked to no one (both sides of the link).
pub async fn release_ip(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE subscribers SET assigned_ip = NULL, updated_at = now() WHERE assigned_ip = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE ip_addresses SET status = 'Available', assigned_to = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Takes the lowest Available address of `pool` that nobody else is taking right
/// now and links it to the subscriber (both sides). Concurrent allocations skip
/// each other's locked rows instead of queueing on them, so they never get the
/// same address. When every Available address left is locked by other
/// allocations, it waits for them (one of them may roll back and leave its
/// address free) instead of calling the pool full. None when the pool has no
/// Available address left.
pub async fn allocate(
    tx: &mut PgConnection,
    subscriber: Uuid,
    pool: Option<Uuid>,
) -> sqlx::Result<Option<(Uuid, String)>> {
    let Some(pool) = pool else { return Ok(None) };
    const PICK: &str = "SELECT id, ip_address FROM ip_addresses
         WHERE subnet = $1 AND status = 'Available'
         ORDER BY ip_address::inet LIMIT 1 FOR UPDATE";
    let mut row: Option<(Uuid, String)> = sqlx::query_as(&format!("{PICK} SKIP LOCKED"))
        .bind(pool)
        .fetch_optional(&mut *tx)
        .await?;
    if row.is_none() {
        // Without SKIP LOCKED the query waits for each locked candidate's
        // transaction; a row taken by a commit fails the re-check and is passed
        // over, one left by a rollback is ours.
        row = sqlx::query_as(PICK)
            .bind(pool)
            .fetch_optional(&mut *tx)
            .await?;
    }
    if let Some((addr, _)) = &row {
        sqlx::query(
            "UPDATE ip_addresses SET status = 'Assigned', assigned_to = $2, updated_at = now() WHERE id = $1",
        )
        .bind(addr)
        .bind(subscriber)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE subscribers SET assigned_ip = $2, updated_at = now() WHERE id = $1")
            .bind(subscriber)
            .bind(addr)
            .execute(&mut *tx)
            .await?;
    }
    Ok(row)
}

/// Puts the subscriber on the network and publishes `subscriber.provisioned`.
pub async fn provision(
    tx: &mut PgConnection,
    service: &str,
    secrets: &SecretBox,
    subscriber: Uuid,
) -> ApiResult<()> {
    let sub: Sub = sqlx::query_as(
        "SELECT radius_username, radius_password, service_plan, assigned_ip, connection_type, status
         FROM subscribers WHERE id = $1 FOR UPDATE",
    )
    .bind(subscriber)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::field("subscriber", "No such subscriber."))?;
    if sub.status == isp_events::options::SubscriberStatus::Deactivated {
        return Err(ApiError::conflict(
            "The subscriber is Deactivated; an installation cannot be completed.",
        ));
    }
    let plan = plan(tx, sub.service_plan).await?.ok_or_else(|| {
        ApiError::conflict(
            "The subscriber's service plan is not known to the NOC yet; try again in a moment.",
        )
    })?;

    // An address already linked (by a Network Engineer, or an earlier completion)
    // is kept, whatever the plan; a Static-Public plan without one draws from its pool.
    let mut ip: Option<String> = match sub.assigned_ip {
        Some(existing) => ip_text(tx, Some(&existing.to_string())).await?,
        None => None,
    };
    if plan.ip_assignment_type == "Static-Public" && sub.assigned_ip.is_none() {
        let pool = plan.static_ip_pool.ok_or_else(|| {
            ApiError::conflict(format!("The plan {:?} has no static IP pool.", plan.name))
        })?;
        let Some((_, text)) = allocate(tx, subscriber, Some(pool)).await? else {
            let network: Option<String> =
                sqlx::query_scalar("SELECT network FROM ip_subnets WHERE id = $1")
                    .bind(pool)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(ApiError::conflict(format!(
                "No Available address is left in the static IP pool {} of plan {:?}; add addresses or free one, then complete the order again.",
                network.unwrap_or_else(|| pool.to_string()),
                plan.name
            )));
        };
        ip = Some(text);
    }

    let password = secrets
        .decrypt(&sub.radius_password)
        .map_err(ApiError::Internal)?;
    let rate = radius::rate_limit(plan.upload_speed, plan.download_speed);
    radius::write_account(tx, &sub.radius_username, &password, &rate, ip.as_deref()).await?;
    radius::set_suspended(
        tx,
        &sub.radius_username,
        sub.status == isp_events::options::SubscriberStatus::Suspended,
    )
    .await?;
    sqlx::query("UPDATE subscribers SET provisioned_at = now(), updated_at = now() WHERE id = $1")
        .bind(subscriber)
        .execute(&mut *tx)
        .await?;
    enqueue(
        tx,
        service,
        &SubscriberProvisioned {
            subscriber_id: subscriber,
            connection_type: sub.connection_type,
            assigned_ip: ip,
            radius_username: sub.radius_username,
            at: chrono::Utc::now(),
        },
    )
    .await
    .map_err(ApiError::Internal)?;
    Ok(())
}
