//! Events Support consumes. Projections (Core's plans and staff, CRM's buildings,
//! Billing's subscribers, NOC's resources and routers) write through
//! [`Projection`]: a stale or replayed event never overwrites newer data, nothing
//! brings back a deleted row, and a fresh schema converges by replaying the
//! stream. NOC's `network.*` events become network tickets ([`crate::network`]);
//! Billing's and Support's own events become customer notifications
//! ([`crate::notifications`]).

use std::sync::Arc;

use isp_events::payloads::*;
use isp_events::{entity_change, CloudEvent, EventHandler, Projection};
use sqlx::PgConnection;

use crate::network::{self, NetworkSettings};
use crate::notifications::Notifier;

const PLANS: Projection = Projection::new("plans", &["name"]);
const STAFF: Projection =
    Projection::new("staff", &["full_name", "role", "status"]).without_tombstone();
const BUILDINGS: Projection = Projection::new("buildings", &["name"]);
const RESOURCES: Projection = Projection::new(
    "resources",
    &[
        "resource_name",
        "resource_type",
        "status",
        "location",
        "management_ip",
    ],
);
const SUBSCRIBERS: Projection = Projection::new(
    "subscribers",
    &[
        "account_number",
        "first_name",
        "last_name",
        "mpesa_number",
        "contact_phone",
        "email",
        "status",
        "service_plan",
        "service_location",
        "building",
    ],
)
.without_tombstone();

/// `isp.core.>`, durable `support-core`.
pub struct CoreEvents;

impl EventHandler for CoreEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(p) = entity_change::<PlanSnapshot>(ev)? {
            PLANS
                .upsert(tx, &p, |row, p| {
                    row.bind(&p.name);
                })
                .await?;
        } else if let Some(s) = entity_change::<StaffSnapshot>(ev)? {
            STAFF
                .upsert(tx, &s, |row, s| {
                    row.bind(&s.full_name).bind(&s.role).bind(s.status);
                })
                .await?;
        }
        Ok(())
    }
}

/// `isp.crm.>`, durable `support-crm`.
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

/// `isp.billing.>`, durable `support-billing`: the subscriber projection and the
/// notifications of invoices, payments and status changes (one consumer, so a
/// subscriber is projected before the invoice that follows it is notified).
pub struct BillingEvents {
    pub notifier: Arc<Notifier>,
}

impl EventHandler for BillingEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(s) = entity_change::<SubscriberSnapshot>(ev)? {
            return upsert_subscriber(tx, &s).await;
        }
        self.notifier.on_billing_event(tx, ev).await
    }
}

/// Billing's and NOC's consumers both write a subscriber's row; this lock makes
/// them take turns, so neither misses the other's uncommitted write (NOC's router
/// may come first, for a row Billing's event has not created yet).
async fn lock_subscriber(tx: &mut PgConnection, id: uuid::Uuid) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn upsert_subscriber(
    tx: &mut PgConnection,
    s: &isp_events::projection::Change<SubscriberSnapshot>,
) -> anyhow::Result<()> {
    lock_subscriber(tx, s.id).await?;
    let written = SUBSCRIBERS
        .upsert(tx, s, |row, s| {
            row.bind(&s.account_number)
                .bind(&s.first_name)
                .bind(&s.last_name)
                .bind(&s.mpesa_number)
                .bind(&s.contact_phone)
                .bind(&s.email)
                .bind(s.status)
                .bind(s.service_plan)
                .bind(s.service_location)
                .bind(s.building);
        })
        .await?;
    // NOC's router may have arrived before the subscriber's first snapshot.
    if written {
        sqlx::query(
            "UPDATE subscribers SET router = r.router FROM subscriber_routers r
             WHERE subscribers.id = $1 AND r.subscriber_id = $1 AND subscribers.router IS NULL",
        )
        .bind(s.id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// `isp.noc.>`, durable `support-noc`: resources, each subscriber's router, and
/// Zabbix problems, updates and recoveries.
pub struct NocEvents {
    pub network: NetworkSettings,
}

impl EventHandler for NocEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(r) = entity_change::<ResourceSnapshot>(ev)? {
            RESOURCES
                .upsert(tx, &r, |row, r| {
                    row.bind(&r.resource_name)
                        .bind(r.resource_type)
                        .bind(r.status)
                        .bind(r.location)
                        .bind(&r.management_ip);
                })
                .await?;
            return Ok(());
        }
        if let Some(n) = ev.payload::<SubscriberNetworkUpdated>()? {
            let at = n.at.unwrap_or(ev.time);
            lock_subscriber(tx, n.subscriber_id).await?;
            let applied = sqlx::query(
                "INSERT INTO subscriber_routers (subscriber_id, router, at) VALUES ($1, $2, $3)
                 ON CONFLICT (subscriber_id) DO UPDATE SET router = EXCLUDED.router, at = EXCLUDED.at
                 WHERE subscriber_routers.at <= EXCLUDED.at",
            )
            .bind(n.subscriber_id)
            .bind(n.router)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if applied == 1 {
                sqlx::query("UPDATE subscribers SET router = $2 WHERE id = $1")
                    .bind(n.subscriber_id)
                    .bind(n.router)
                    .execute(&mut *tx)
                    .await?;
            }
            return Ok(());
        }
        if let Some(p) = ev.payload::<NetworkProblem>()? {
            return network::problem(tx, &self.network, &p).await;
        }
        if let Some(r) = ev.payload::<NetworkRecovered>()? {
            return network::recovered(tx, &self.network, &r).await;
        }
        if let Some(u) = ev.payload::<NetworkProblemUpdated>()? {
            return network::updated(tx, &self.network, &u).await;
        }
        Ok(())
    }
}

/// `isp.support.ticket.updated`, durable `support-tickets`: status changes the
/// customer should hear about.
pub struct TicketEvents {
    pub notifier: Arc<Notifier>,
}

impl EventHandler for TicketEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        self.notifier.on_ticket_event(tx, ev).await
    }
}

/// `isp.notify.>`, durable `support-notify`: delivery reports and opt-outs.
pub struct NotifyEvents;

impl EventHandler for NotifyEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(s) = ev.payload::<NotificationStatus>()? {
            return crate::notifications::apply_status(tx, &s).await;
        }
        if let Some(s) = ev.payload::<SuppressionAdded>()? {
            return crate::notifications::apply_suppression(tx, &s, true).await;
        }
        if let Some(s) = ev.payload::<SuppressionRemoved>()? {
            return crate::notifications::apply_suppression(tx, &s, false).await;
        }
        Ok(())
    }
}
