//! The projection toolkit: how a service keeps its copy of another service's
//! entities (plans, partners, buildings, staff, subnets, subscribers, ...).
//!
//! Every projection follows one rule, applied in one place:
//!
//! * **Ordering.** A snapshot is written only if it is at least as new as the one
//!   held: its version (`updatedAt`, or a projection's own version columns,
//!   compared as a tuple) is greater than or equal to the held one. An older
//!   snapshot, e.g. a redelivery or a retry that lands after a later event,
//!   changes nothing. Equal versions re-apply harmlessly (the same snapshot twice).
//! * **Tombstones.** A `*.deleted` event marks the row deleted (inserting it if the
//!   entity was never seen, so that what arrives later cannot create it) whatever
//!   its version, and a deleted row never changes again. Entities are keyed by ids
//!   that are never reused and a deletion carries the entity's last snapshot, so
//!   nothing legitimately follows it; in particular a late `*.updated` carrying
//!   the same `updatedAt` as the deletion (both are the last state) cannot bring
//!   the row back.
//!
//! [`Projection::upsert`] writes a snapshot under that rule in one statement
//! (`INSERT ... ON CONFLICT DO UPDATE ... WHERE <rule>`), so two handlers racing on
//! a new entity cannot both win; [`supersedes`] is the same rule for the few
//! projections that must decide in Rust (a NOC subscriber's first sight creates
//! RADIUS credentials). Handlers dispatch with [`entity_change`].

use chrono::{DateTime, Utc};
use sqlx::postgres::Postgres;
use sqlx::query_builder::Separated;
use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

use crate::payloads::*;
use crate::{CloudEvent, EventPayload};

/// An entity other services project: its id, its version, and how its events
/// carry it.
pub trait Entity: Sized {
    fn id(&self) -> Uuid;
    fn updated_at(&self) -> DateTime<Utc>;
    /// The snapshot carried by any of the entity's events and whether it was a
    /// deletion; `None` for other event types.
    fn change(ev: &CloudEvent) -> serde_json::Result<Option<Change<Self>>>;
}

/// An entity with `created`, `updated` and `deleted` events (the shape a
/// tombstone test needs to build them).
pub trait Lifecycle: Entity + Clone {
    type Created: EventPayload;
    type Updated: EventPayload;
    type Deleted: EventPayload;
    fn created(self) -> Self::Created;
    fn updated(self) -> Self::Updated;
    fn deleted(self) -> Self::Deleted;
}

/// A snapshot and whether the event that carried it was a deletion.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<S> {
    pub snapshot: S,
    pub deleted: bool,
}

impl<S> std::ops::Deref for Change<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.snapshot
    }
}

/// The dispatch every projection handler starts with:
///
/// ```ignore
/// if let Some(plan) = entity_change::<PlanSnapshot>(ev)? { /* plan.deleted, plan.name, ... */ }
/// ```
pub fn entity_change<S: Entity>(ev: &CloudEvent) -> serde_json::Result<Option<Change<S>>> {
    S::change(ev)
}

/// Implements [`Entity`] (and [`Lifecycle`] when there is a deletion event).
macro_rules! entity {
    ($snapshot:ty, |$s:ident| $id:expr; live: $($live:ident),+ $(; deleted: $deleted:ident)?) => {
        impl Entity for $snapshot {
            fn id(&self) -> Uuid {
                let $s = self;
                $id
            }
            fn updated_at(&self) -> DateTime<Utc> {
                self.updated_at
            }
            fn change(ev: &CloudEvent) -> serde_json::Result<Option<Change<Self>>> {
                $(
                    if let Some(e) = ev.payload::<$live>()? {
                        return Ok(Some(Change { snapshot: e.0, deleted: false }));
                    }
                )+
                $(
                    if let Some(e) = ev.payload::<$deleted>()? {
                        return Ok(Some(Change { snapshot: e.0, deleted: true }));
                    }
                )?
                Ok(None)
            }
        }
    };
}

macro_rules! lifecycle {
    ($snapshot:ty: $created:ident, $updated:ident, $deleted:ident) => {
        entity!($snapshot, |s| s.id; live: $created, $updated; deleted: $deleted);
        impl Lifecycle for $snapshot {
            type Created = $created;
            type Updated = $updated;
            type Deleted = $deleted;
            fn created(self) -> $created {
                $created(self)
            }
            fn updated(self) -> $updated {
                $updated(self)
            }
            fn deleted(self) -> $deleted {
                $deleted(self)
            }
        }
    };
}

lifecycle!(PlanSnapshot: PlanCreated, PlanUpdated, PlanDeleted);
lifecycle!(PartnerSnapshot: PartnerCreated, PartnerUpdated, PartnerDeleted);
lifecycle!(BuildingSnapshot: BuildingCreated, BuildingUpdated, BuildingDeleted);
lifecycle!(ResourceSnapshot: ResourceCreated, ResourceUpdated, ResourceDeleted);
lifecycle!(IpSubnetSnapshot: IpSubnetCreated, IpSubnetUpdated, IpSubnetDeleted);
entity!(StaffSnapshot, |s| s.id; live: StaffCreated, StaffUpdated);
entity!(LeadSnapshot, |s| s.id; live: LeadCreated);
entity!(SubscriberSnapshot, |s| s.id; live: SubscriberCreated, SubscriberUpdated);
entity!(InvoiceSnapshot, |s| s.id; live: InvoiceCreated, InvoiceOverdue, InvoiceUpdated);
entity!(TicketSnapshot, |s| s.id; live: TicketCreated, TicketUpdated);

/// What a projection holds of an entity, or what a snapshot brings: its version
/// and whether it is a deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held<V> {
    pub version: V,
    pub deleted: bool,
}

/// The projection rule (see the module docs): does `incoming` replace `held`?
pub fn supersedes<V: PartialOrd>(held: Option<&Held<V>>, incoming: &Held<V>) -> bool {
    match held {
        None => true,
        Some(h) if h.deleted => false,
        Some(_) if incoming.deleted => true,
        Some(h) => incoming.version >= h.version,
    }
}

/// The values of one snapshot's columns, in [`Projection`]'s column order.
pub struct Row<'q, 'a> {
    sep: Separated<'q, 'a, Postgres, &'static str>,
    bound: usize,
}

impl<'a> Row<'_, 'a> {
    /// Binds the next column's value.
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'a + sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres>,
    {
        self.sep.push_bind(value);
        self.bound += 1;
        self
    }
}

/// One projected table: `key` (the entity id), the snapshot's `columns`,
/// `updated_at`, and, for entities that can be deleted, a boolean tombstone column.
#[derive(Debug, Clone, Copy)]
pub struct Projection {
    table: &'static str,
    key: &'static str,
    columns: &'static [&'static str],
    version: &'static [&'static str],
    monotonic: &'static [&'static str],
    tombstone: Option<&'static str>,
}

impl Projection {
    /// `table (id, <columns>, updated_at, deleted)`, ordered by `updated_at`.
    pub const fn new(table: &'static str, columns: &'static [&'static str]) -> Self {
        Self {
            table,
            key: "id",
            columns,
            version: &["updated_at"],
            monotonic: &[],
            tombstone: Some("deleted"),
        }
    }

    /// The entity id lives in `key` instead of `id`.
    pub const fn key(mut self, key: &'static str) -> Self {
        self.key = key;
        self
    }

    /// For entities that are never deleted (no tombstone column).
    pub const fn without_tombstone(mut self) -> Self {
        self.tombstone = None;
        self
    }

    /// Orders snapshots by these columns, compared as a tuple, instead of
    /// `updated_at` alone (e.g. `token_version, updated_at`: a version that only
    /// grows decides before the clock does). Each is `updated_at` or one of the
    /// columns.
    pub const fn ordered_by(mut self, version: &'static [&'static str]) -> Self {
        self.version = version;
        self
    }

    /// These columns only ever grow: a newer snapshot carrying a smaller value
    /// (e.g. a deletion's snapshot without the token version) keeps the held one.
    pub const fn monotonic(mut self, columns: &'static [&'static str]) -> Self {
        self.monotonic = columns;
        self
    }

    pub fn table(&self) -> &'static str {
        self.table
    }

    /// Writes `change` if the projection rule lets it replace what is held;
    /// `bind` gives the values of `columns` in order. True when it was written.
    pub async fn upsert<'a, S: Entity>(
        &self,
        tx: &mut PgConnection,
        change: &'a Change<S>,
        bind: impl FnOnce(&mut Row<'_, 'a>, &'a S),
    ) -> anyhow::Result<bool> {
        let mut qb = QueryBuilder::<Postgres>::new(self.insert_head());
        {
            let mut row = Row {
                sep: qb.separated(", "),
                bound: 0,
            };
            row.sep.push_bind(change.snapshot.id());
            bind(&mut row, &change.snapshot);
            anyhow::ensure!(
                row.bound == self.columns.len(),
                "projection {}: {} values bound for {} columns",
                self.table,
                row.bound,
                self.columns.len()
            );
            row.sep.push_bind(change.snapshot.updated_at());
            if self.tombstone.is_some() {
                row.sep.push_bind(change.deleted);
            }
        }
        qb.push(self.conflict_tail());
        let written = qb.build().execute(&mut *tx).await?.rows_affected();
        Ok(written > 0)
    }

    fn all_columns(&self) -> Vec<&'static str> {
        let mut all = vec![self.key];
        all.extend_from_slice(self.columns);
        all.push("updated_at");
        all.extend(self.tombstone);
        all
    }

    fn insert_head(&self) -> String {
        format!(
            "INSERT INTO {} ({}) VALUES (",
            self.table,
            self.all_columns().join(", ")
        )
    }

    fn conflict_tail(&self) -> String {
        let t = self.table;
        let set = self.all_columns()[1..]
            .iter()
            .map(|c| {
                if self.monotonic.contains(c) {
                    format!("{c} = GREATEST({t}.{c}, EXCLUDED.{c})")
                } else {
                    format!("{c} = EXCLUDED.{c}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let version = |of: &str| {
            self.version
                .iter()
                .map(|c| format!("{of}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let newer = format!("ROW({}) <= ROW({})", version(t), version("EXCLUDED"));
        let rule = match self.tombstone {
            Some(d) => format!("NOT {t}.{d} AND (EXCLUDED.{d} OR {newer})"),
            None => newer,
        };
        format!(
            ") ON CONFLICT ({}) DO UPDATE SET {set} WHERE {rule}",
            self.key
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(version: i32, deleted: bool) -> Held<i32> {
        Held { version, deleted }
    }

    #[test]
    fn newer_or_equal_snapshots_replace_older_ones_never_the_reverse() {
        assert!(supersedes(None, &held(1, false)));
        assert!(supersedes(Some(&held(1, false)), &held(2, false)));
        assert!(supersedes(Some(&held(2, false)), &held(2, false)));
        assert!(!supersedes(Some(&held(2, false)), &held(1, false)));
    }

    #[test]
    fn a_tombstone_wins_and_is_final() {
        assert!(supersedes(None, &held(1, true)));
        assert!(supersedes(Some(&held(2, false)), &held(1, true)));
        assert!(!supersedes(Some(&held(2, true)), &held(2, false)));
        assert!(!supersedes(Some(&held(2, true)), &held(3, false)));
        assert!(!supersedes(Some(&held(2, true)), &held(3, true)));
    }

    #[test]
    fn the_statement_carries_the_same_rule() {
        let p = Projection::new("plans", &["name", "price"]);
        assert_eq!(
            format!("{}$1{}", p.insert_head(), p.conflict_tail()),
            "INSERT INTO plans (id, name, price, updated_at, deleted) VALUES ($1) \
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price, \
             updated_at = EXCLUDED.updated_at, deleted = EXCLUDED.deleted \
             WHERE NOT plans.deleted AND (EXCLUDED.deleted OR ROW(plans.updated_at) <= ROW(EXCLUDED.updated_at))"
        );
        let s = Projection::new("staff_access", &["token_version", "active"])
            .key("staff_id")
            .without_tombstone()
            .monotonic(&["token_version"])
            .ordered_by(&["token_version", "updated_at"]);
        assert!(s.conflict_tail().ends_with(
            "ON CONFLICT (staff_id) DO UPDATE SET \
             token_version = GREATEST(staff_access.token_version, EXCLUDED.token_version), \
             active = EXCLUDED.active, updated_at = EXCLUDED.updated_at \
             WHERE ROW(staff_access.token_version, staff_access.updated_at) <= \
             ROW(EXCLUDED.token_version, EXCLUDED.updated_at)"
        ));
    }
}
