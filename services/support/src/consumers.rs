//! Events Support consumes. Projections (Core's plans and staff, CRM's buildings,
//! Billing's subscribers, NOC's resources and routers) upsert on the snapshot's
//! `updatedAt` (or NOC's `at`), so a stale or replayed event never overwrites
//! newer data, and a fresh schema converges by replaying the stream. NOC's
//! `network.*` events become network tickets ([`crate::network`]); Billing's and
//! Support's own events become customer notifications ([`crate::notifications`]).

use std::sync::Arc;

use isp_events::payloads::*;
use isp_events::{BoxFuture, CloudEvent, EventHandler};
use sqlx::PgConnection;

use crate::network::{self, NetworkSettings};
use crate::notifications::Notifier;

/// `isp.core.>`, durable `support-core`.
pub struct CoreEvents;

impl EventHandler for CoreEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if let Some((p, deleted)) =
                entity_change::<PlanSnapshot, PlanCreated, PlanUpdated, PlanDeleted>(ev)?
            {
                sqlx::query(
                    "INSERT INTO plans (id, name, deleted, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, deleted = EXCLUDED.deleted,
                         updated_at = EXCLUDED.updated_at
                     WHERE plans.updated_at <= EXCLUDED.updated_at AND NOT plans.deleted",
                )
                .bind(p.id)
                .bind(&p.name)
                .bind(deleted)
                .bind(p.updated_at)
                .execute(&mut *tx)
                .await?;
                return Ok(());
            }
            let staff = match ev.payload::<StaffCreated>()? {
                Some(s) => Some(s.0),
                None => ev.payload::<StaffUpdated>()?.map(|s| s.0),
            };
            if let Some(s) = staff {
                sqlx::query(
                    "INSERT INTO staff (id, full_name, role, status, updated_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO UPDATE SET full_name = EXCLUDED.full_name, role = EXCLUDED.role,
                         status = EXCLUDED.status, updated_at = EXCLUDED.updated_at
                     WHERE staff.updated_at <= EXCLUDED.updated_at",
                )
                .bind(s.id)
                .bind(&s.full_name)
                .bind(&s.role)
                .bind(&s.status)
                .bind(s.updated_at)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        })
    }
}

/// `isp.crm.>`, durable `support-crm`.
pub struct CrmEvents;

impl EventHandler for CrmEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if let Some((b, deleted)) = entity_change::<
                BuildingSnapshot,
                BuildingCreated,
                BuildingUpdated,
                BuildingDeleted,
            >(ev)?
            {
                sqlx::query(
                    "INSERT INTO buildings (id, name, deleted, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, deleted = EXCLUDED.deleted,
                         updated_at = EXCLUDED.updated_at
                     WHERE buildings.updated_at <= EXCLUDED.updated_at AND NOT buildings.deleted",
                )
                .bind(b.id)
                .bind(&b.name)
                .bind(deleted)
                .bind(b.updated_at)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        })
    }
}

/// `isp.billing.>`, durable `support-billing`: the subscriber projection and the
/// notifications of invoices, payments and status changes (one consumer, so a
/// subscriber is projected before the invoice that follows it is notified).
pub struct BillingEvents {
    pub notifier: Arc<Notifier>,
}

impl EventHandler for BillingEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let snapshot = match ev.payload::<SubscriberCreated>()? {
                Some(s) => Some(s.0),
                None => ev.payload::<SubscriberUpdated>()?.map(|s| s.0),
            };
            if let Some(s) = snapshot {
                return upsert_subscriber(tx, &s).await;
            }
            self.notifier.on_billing_event(tx, ev).await
        })
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

async fn upsert_subscriber(tx: &mut PgConnection, s: &SubscriberSnapshot) -> anyhow::Result<()> {
    lock_subscriber(tx, s.id).await?;
    sqlx::query(
        "INSERT INTO subscribers (id, account_number, first_name, last_name, mpesa_number,
             contact_phone, email, status, service_plan, service_location, building, updated_at, router)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
             (SELECT router FROM subscriber_routers WHERE subscriber_id = $1))
         ON CONFLICT (id) DO UPDATE SET account_number = EXCLUDED.account_number,
             first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
             mpesa_number = EXCLUDED.mpesa_number, contact_phone = EXCLUDED.contact_phone,
             email = EXCLUDED.email, status = EXCLUDED.status, service_plan = EXCLUDED.service_plan,
             service_location = EXCLUDED.service_location, building = EXCLUDED.building,
             updated_at = EXCLUDED.updated_at
         WHERE subscribers.updated_at <= EXCLUDED.updated_at",
    )
    .bind(s.id)
    .bind(&s.account_number)
    .bind(&s.first_name)
    .bind(&s.last_name)
    .bind(&s.mpesa_number)
    .bind(&s.contact_phone)
    .bind(&s.email)
    .bind(&s.status)
    .bind(s.service_plan)
    .bind(s.service_location)
    .bind(s.building)
    .bind(s.updated_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `isp.noc.>`, durable `support-noc`: resources, each subscriber's router, and
/// Zabbix problems, updates and recoveries.
pub struct NocEvents {
    pub network: NetworkSettings,
}

impl EventHandler for NocEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if let Some((r, deleted)) = entity_change::<
                ResourceSnapshot,
                ResourceCreated,
                ResourceUpdated,
                ResourceDeleted,
            >(ev)?
            {
                sqlx::query(
                    "INSERT INTO resources (id, resource_name, resource_type, status, location,
                         management_ip, deleted, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (id) DO UPDATE SET resource_name = EXCLUDED.resource_name,
                         resource_type = EXCLUDED.resource_type, status = EXCLUDED.status,
                         location = EXCLUDED.location, management_ip = EXCLUDED.management_ip,
                         deleted = EXCLUDED.deleted, updated_at = EXCLUDED.updated_at
                     WHERE resources.updated_at <= EXCLUDED.updated_at AND NOT resources.deleted",
                )
                .bind(r.id)
                .bind(&r.resource_name)
                .bind(&r.resource_type)
                .bind(&r.status)
                .bind(r.location)
                .bind(&r.management_ip)
                .bind(deleted)
                .bind(r.updated_at)
                .execute(&mut *tx)
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
        })
    }
}

/// `isp.support.ticket.updated`, durable `support-tickets`: status changes the
/// customer should hear about.
pub struct TicketEvents {
    pub notifier: Arc<Notifier>,
}

impl EventHandler for TicketEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { self.notifier.on_ticket_event(tx, ev).await })
    }
}

/// `isp.notify.>`, durable `support-notify`: delivery reports and opt-outs.
pub struct NotifyEvents;

impl EventHandler for NotifyEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
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
        })
    }
}
