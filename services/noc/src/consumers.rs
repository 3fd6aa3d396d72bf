//! Events the NOC consumes: plans and staff from Core, buildings from CRM,
//! subscribers and their status changes from Billing. Every projection follows
//! the shared rule ([`isp_events::projection`]): a stale or replayed snapshot
//! never overwrites newer data, and nothing brings back a deleted entity.

use isp_events::payloads::*;
use isp_events::projection::{supersedes, Held};
use isp_events::{entity_change, Change, CloudEvent, EventHandler, Projection};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::provision;
use crate::radius;
use crate::secrets::{generate_password, SecretBox};

pub struct CoreEvents;

const PLANS: Projection = Projection::new(
    "plans",
    &[
        "name",
        "download_speed",
        "upload_speed",
        "ip_assignment_type",
        "static_ip_pool",
    ],
);

/// Technicians for work orders. A deleted member arrives as Inactive.
const STAFF: Projection =
    Projection::new("staff", &["full_name", "role", "status"]).without_tombstone();

const BUILDINGS: Projection = Projection::new("buildings", &["name"]);

impl EventHandler for CoreEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(p) = entity_change::<PlanSnapshot>(ev)? {
            return upsert_plan(tx, &p).await;
        }
        if let Some(s) = entity_change::<StaffSnapshot>(ev)? {
            STAFF
                .upsert(tx, &s, |row, s| {
                    row.bind(&s.full_name).bind(&s.role).bind(s.status);
                })
                .await?;
        }
        Ok(())
    }
}

/// A plan whose speeds change gets its subscribers' rate limits rewritten, and a
/// CoA-Request queued for each of their open sessions.
async fn upsert_plan(tx: &mut PgConnection, p: &Change<PlanSnapshot>) -> anyhow::Result<()> {
    let before: Option<(i32, i32)> =
        sqlx::query_as("SELECT upload_speed, download_speed FROM plans WHERE id = $1 FOR UPDATE")
            .bind(p.id)
            .fetch_optional(&mut *tx)
            .await?;
    let (up, down) = (
        i32::try_from(p.upload_speed)?,
        i32::try_from(p.download_speed)?,
    );
    let applied = PLANS
        .upsert(tx, p, |row, p| {
            row.bind(&p.name)
                .bind(down)
                .bind(up)
                .bind(&p.ip_assignment_type)
                .bind(p.static_ip_pool);
        })
        .await?;
    if !applied || p.deleted || before.is_none_or(|b| b == (up, down)) {
        return Ok(());
    }
    let rate = radius::rate_limit(up, down);
    let subs: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, radius_username FROM subscribers
         WHERE service_plan = $1 AND provisioned_at IS NOT NULL AND status <> 'Deactivated'",
    )
    .bind(p.id)
    .fetch_all(&mut *tx)
    .await?;
    for (id, user) in subs {
        radius::set_rate_limit(tx, &user, &rate).await?;
        radius::queue_for_open_sessions(tx, "CoA", id, &user, Some(&rate)).await?;
    }
    Ok(())
}

pub struct CrmEvents;

impl EventHandler for CrmEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(b) = entity_change::<BuildingSnapshot>(ev)? {
            BUILDINGS
                .upsert(tx, &b, |row, b| {
                    row.bind(&b.name);
                })
                .await?;
        }
        Ok(())
    }
}

pub struct BillingEvents {
    pub secrets: SecretBox,
}

impl EventHandler for BillingEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(s) = ev.payload::<SubscriberCreated>()? {
            return self.upsert(tx, &s, true).await;
        }
        if let Some(s) = ev.payload::<SubscriberUpdated>()? {
            return self.upsert(tx, &s, false).await;
        }
        if let Some(s) = ev.payload::<SubscriberSuspended>()? {
            return status_change(tx, ev.id, &s, "Suspended").await;
        }
        if let Some(s) = ev.payload::<SubscriberReactivated>()? {
            return status_change(tx, ev.id, &s, "Active").await;
        }
        if let Some(s) = ev.payload::<SubscriberActivated>()? {
            return status_change(tx, ev.id, &s, "Active").await;
        }
        if let Some(s) = ev.payload::<SubscriberDeactivated>()? {
            return status_change(tx, ev.id, &s, "Deactivated").await;
        }
        Ok(())
    }
}

/// `ACC-000123` -> `ACC-000123`: the account number the customer already knows,
/// restricted to characters every NAS accepts in a PPPoE/hotspot login.
pub fn username_from_account(account: &str) -> String {
    let u: String = account
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if u.is_empty() {
        "subscriber".into()
    } else {
        u
    }
}

impl BillingEvents {
    async fn upsert(
        &self,
        tx: &mut PgConnection,
        s: &SubscriberSnapshot,
        created: bool,
    ) -> anyhow::Result<()> {
        // Lock order: the subscriber's work orders, then the subscriber, as a
        // completion takes them (the update locks the order, provisioning then the
        // subscriber). Locking the subscriber first and the orders when rewriting
        // their copy of the name made a cycle with a concurrent completion.
        sqlx::query("SELECT id FROM work_orders WHERE subscriber = $1 ORDER BY id FOR UPDATE")
            .bind(s.id)
            .execute(&mut *tx)
            .await?;
        let existing: Option<(Uuid, chrono::DateTime<chrono::Utc>, String)> = sqlx::query_as(
            "SELECT service_plan, billing_updated_at, radius_username FROM subscribers WHERE id = $1 FOR UPDATE",
        )
        .bind(s.id)
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            None => {
                let base = username_from_account(&s.account_number);
                let mut username = base.clone();
                let mut n = 1;
                while sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM subscribers WHERE lower(radius_username) = lower($1))",
                )
                .bind(&username)
                .fetch_one(&mut *tx)
                .await?
                {
                    n += 1;
                    username = format!("{base}-{n}");
                }
                let password = self.secrets.encrypt(&generate_password())?;
                let static_plan = provision::plan(tx, s.service_plan)
                    .await?
                    .is_some_and(|p| p.ip_assignment_type == "Static-Public");
                sqlx::query(
                    "INSERT INTO subscribers (id, first_name, last_name, account_number, contact_phone, status,
                       service_plan, address_notes, building, billing_updated_at, connection_type,
                       radius_username, radius_password)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(s.id)
                .bind(&s.first_name)
                .bind(&s.last_name)
                .bind(&s.account_number)
                .bind(s.contact_phone.as_ref().unwrap_or(&s.mpesa_number))
                .bind(s.status)
                .bind(s.service_plan)
                .bind(&s.address_notes)
                .bind(s.building)
                .bind(s.updated_at)
                .bind(if static_plan { "Static IP" } else { "PPPoE" })
                .bind(&username)
                .bind(&password)
                .execute(&mut *tx)
                .await?;
                apply_early_status(tx, s.id).await?;
            }
            Some((_, seen, _))
                if !supersedes(
                    Some(&Held {
                        version: seen,
                        deleted: false,
                    }),
                    &Held {
                        version: s.updated_at,
                        deleted: false,
                    },
                ) =>
            {
                // Stale: a newer snapshot is already here (events can arrive out of order).
                return self.ensure_installation_order(tx, s.id, created).await;
            }
            Some((old_plan, _, username)) => {
                sqlx::query(
                    "UPDATE subscribers SET first_name = $2, last_name = $3, account_number = $4, contact_phone = $5,
                       status = $6, service_plan = $7, address_notes = $8, building = $9, billing_updated_at = $10,
                       updated_at = now()
                     WHERE id = $1",
                )
                .bind(s.id)
                .bind(&s.first_name)
                .bind(&s.last_name)
                .bind(&s.account_number)
                .bind(s.contact_phone.as_ref().unwrap_or(&s.mpesa_number))
                .bind(s.status)
                .bind(s.service_plan)
                .bind(&s.address_notes)
                .bind(s.building)
                .bind(s.updated_at)
                .execute(&mut *tx)
                .await?;
                if old_plan != s.service_plan {
                    self.plan_changed(tx, s.id, &username, old_plan, s.service_plan)
                        .await?;
                }
            }
        }
        sqlx::query(
            "UPDATE work_orders SET subscriber_name = $2, subscriber_phone = $3, address_notes = $4, updated_at = now()
             WHERE subscriber = $1",
        )
        .bind(s.id)
        .bind(format!("{} {}", s.first_name, s.last_name))
        .bind(s.contact_phone.as_ref().unwrap_or(&s.mpesa_number))
        .bind(&s.address_notes)
        .execute(&mut *tx)
        .await?;
        self.ensure_installation_order(tx, s.id, created).await
    }

    /// Exactly one automatic installation order per subscriber, however often (or
    /// late) subscriber.created arrives: the partial unique index decides.
    async fn ensure_installation_order(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        created: bool,
    ) -> anyhow::Result<()> {
        if !created {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO work_orders (id, order_type, subscriber, status, subscriber_name, subscriber_phone, address_notes, automatic)
             SELECT $1, 'New Installation', id, 'Pending', first_name || ' ' || last_name, contact_phone, address_notes, true
             FROM subscribers WHERE id = $2
             ON CONFLICT (subscriber) WHERE automatic DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// A subscriber moved to another plan: new rate limit and a CoA-Request to open
    /// sessions. Moving onto a Static-Public plan without an address draws one from
    /// the new pool; leaving a Static-Public plan frees the address its pool gave.
    /// An address change needs a new session, so open ones are disconnected.
    async fn plan_changed(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        user: &str,
        old_plan: Uuid,
        plan: Uuid,
    ) -> anyhow::Result<()> {
        let (provisioned, assigned_ip): (bool, Option<Uuid>) = sqlx::query_as(
            "SELECT provisioned_at IS NOT NULL AND status <> 'Deactivated', assigned_ip
             FROM subscribers WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let Some(p) = provision::plan(tx, plan).await? else {
            return Ok(());
        };
        if !provisioned {
            return Ok(());
        }
        let rate = radius::rate_limit(p.upload_speed, p.download_speed);
        radius::set_rate_limit(tx, user, &rate).await?;
        let old = provision::plan(tx, old_plan).await?;
        let address_changed = if p.ip_assignment_type == "Static-Public" && assigned_ip.is_none() {
            match provision::allocate(tx, id, p.static_ip_pool).await? {
                Some((_, ip)) => {
                    radius::set_framed_ip(tx, user, Some(&ip)).await?;
                    Some(Some(ip))
                }
                None => {
                    tracing::warn!(subscriber = %id, plan = %plan, "plan change: the static IP pool is full; the subscriber stays on a dynamic address");
                    None
                }
            }
        } else if let (Some(addr), Some(old)) = (assigned_ip, old) {
            let from_old_pool: bool = p.ip_assignment_type != "Static-Public"
                && old.static_ip_pool.is_some()
                && sqlx::query_scalar("SELECT subnet = $2 FROM ip_addresses WHERE id = $1")
                    .bind(addr)
                    .bind(old.static_ip_pool)
                    .fetch_optional(&mut *tx)
                    .await?
                    .unwrap_or(false);
            if from_old_pool {
                provision::release_ip(tx, addr).await?;
                radius::set_framed_ip(tx, user, None).await?;
                Some(None)
            } else {
                None
            }
        } else {
            None
        };
        match address_changed {
            Some(_) => {
                radius::queue_for_open_sessions(tx, "Disconnect", id, user, None).await?;
                crate::events::network_updated(tx, "noc", id).await?;
            }
            None => {
                radius::queue_for_open_sessions(tx, "CoA", id, user, Some(&rate)).await?;
            }
        }
        Ok(())
    }
}

/// Applies a Billing status event. The RADIUS block state follows the newest status
/// event (by its `at`, then its time-ordered id): an older one arriving late, e.g.
/// a redelivered `subscriber.suspended` after `subscriber.reactivated`, changes
/// nothing. An event for a subscriber not projected yet is kept and applied when
/// its `subscriber.created` arrives.
async fn status_change(
    tx: &mut PgConnection,
    event_id: Uuid,
    s: &SubscriberStatusChange,
    status: &str,
) -> anyhow::Result<()> {
    type Row = (
        String,
        chrono::DateTime<chrono::Utc>,
        Option<Uuid>,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<Uuid>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT radius_username, billing_updated_at, assigned_ip, status_event_at, status_event_id
         FROM subscribers WHERE id = $1 FOR UPDATE",
    )
    .bind(s.subscriber_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user, seen, ip, last_at, last_id)) = row else {
        tracing::info!(subscriber = %s.subscriber_id, status, "status change before subscriber.created: kept until the subscriber arrives");
        sqlx::query(
            "INSERT INTO early_status_events (subscriber, status, account_number, reason, at, event_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (subscriber) DO UPDATE SET status = EXCLUDED.status,
               account_number = EXCLUDED.account_number, reason = EXCLUDED.reason,
               at = EXCLUDED.at, event_id = EXCLUDED.event_id, received_at = now()
             WHERE (early_status_events.at, early_status_events.event_id) < (EXCLUDED.at, EXCLUDED.event_id)",
        )
        .bind(s.subscriber_id)
        .bind(status)
        .bind(&s.account_number)
        .bind(&s.reason)
        .bind(s.at)
        .bind(event_id)
        .execute(&mut *tx)
        .await?;
        return Ok(());
    };
    if let (Some(last_at), Some(last_id)) = (last_at, last_id) {
        if (s.at, event_id) < (last_at, last_id) {
            tracing::info!(subscriber = %s.subscriber_id, status, at = %s.at, newer = %last_at,
                "stale status event: a newer one was already applied; no RADIUS change");
            return Ok(());
        }
    }
    sqlx::query("UPDATE subscribers SET status_event_at = $2, status_event_id = $3 WHERE id = $1")
        .bind(s.subscriber_id)
        .bind(s.at)
        .bind(event_id)
        .execute(&mut *tx)
        .await?;
    // The projected status follows the newest information, which may be a snapshot
    // written in the same Billing transaction with a later updatedAt.
    if seen <= s.at {
        sqlx::query("UPDATE subscribers SET status = $2, billing_updated_at = $3, updated_at = now() WHERE id = $1")
            .bind(s.subscriber_id)
            .bind(status)
            .bind(s.at)
            .execute(&mut *tx)
            .await?;
    }
    match status {
        "Suspended" => {
            radius::set_suspended(tx, &user, true).await?;
            radius::queue_for_open_sessions(tx, "Disconnect", s.subscriber_id, &user, None).await?;
        }
        "Active" => radius::set_suspended(tx, &user, false).await?,
        "Deactivated" => {
            radius::remove_account(tx, &user).await?;
            if let Some(ip) = ip {
                provision::release_ip(tx, ip).await?;
            }
            sqlx::query("UPDATE subscribers SET provisioned_at = NULL WHERE id = $1")
                .bind(s.subscriber_id)
                .execute(&mut *tx)
                .await?;
            radius::queue_for_open_sessions(tx, "Disconnect", s.subscriber_id, &user, None).await?;
            // The released address leaves Billing's (and Support's) copies too.
            crate::events::network_updated(tx, "noc", s.subscriber_id).await?;
        }
        _ => {}
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct EarlyStatus {
    status: String,
    account_number: String,
    reason: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
    event_id: Uuid,
}

/// Applies the status event kept for a subscriber that had not arrived yet.
async fn apply_early_status(tx: &mut PgConnection, subscriber: Uuid) -> anyhow::Result<()> {
    let early: Option<EarlyStatus> = sqlx::query_as(
        "DELETE FROM early_status_events WHERE subscriber = $1
         RETURNING status, account_number, reason, at, event_id",
    )
    .bind(subscriber)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(e) = early {
        let change = SubscriberStatusChange {
            subscriber_id: subscriber,
            account_number: e.account_number,
            reason: e.reason,
            at: e.at,
        };
        status_change(tx, e.event_id, &change, &e.status).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn usernames_come_from_account_numbers() {
        assert_eq!(super::username_from_account(" ACC-000123 "), "ACC-000123");
        assert_eq!(super::username_from_account("ACC 12/3"), "ACC123");
    }
}
