//! Ending access when a session ends (DESIGN section 3).
//!
//! A staff JWT is valid until it expires, but logout, a password change, a role
//! change and deactivation must end it at once, on every service. Core bumps the
//! member's token version on each of these and publishes it in `staff.updated`
//! (`tokenVersion`, `status`). Every other service keeps the tiny `staff_access`
//! table (created by the shared event-table migrations) up to date from those
//! events with a consumer that [`crate::ServiceContext::migrate_and_relay`] starts
//! for it, and the shared [`crate::auth::Principal`] extractor refuses a staff token
//! whose `ver` is older than the table's, or whose member is inactive.
//!
//! Core owns staff: its `staff_access` is a view of its own staff table, so core
//! decides on the current row (and a deleted member's tokens stop at once).
//! Elsewhere the answer is as fresh as the events: a revocation takes effect once
//! `staff.updated` has arrived (normally milliseconds; during a NATS outage, when
//! NATS is back). A member the projection has not heard of yet is let through:
//! the signature is valid, and core refuses the token itself anyway.
//!
//! Service tokens are not staff and are never checked here.

use isp_events::payloads::StaffSnapshot;
use isp_events::{entity_change, CloudEvent, EventHandler, Projection};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::ApiError;

/// The service that owns staff (and so the authoritative `staff_access`).
pub const STAFF_OWNER: &str = "core";

/// Answers "may this staff token still be used?" from a service's own schema.
#[derive(Clone)]
pub struct StaffAccess {
    pool: PgPool,
    /// True at the staff owner: a member without a row no longer exists.
    authoritative: bool,
}

impl std::fmt::Debug for StaffAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffAccess")
            .field("authoritative", &self.authoritative)
            .finish()
    }
}

impl StaffAccess {
    /// A service's projection of core's staff events.
    pub fn projection(pool: PgPool) -> Self {
        Self {
            pool,
            authoritative: false,
        }
    }

    /// The staff owner's own view of its staff table.
    pub fn authoritative(pool: PgPool) -> Self {
        Self {
            pool,
            authoritative: true,
        }
    }

    /// For the service named `service`: authoritative at [`STAFF_OWNER`].
    pub fn for_service(service: &str, pool: PgPool) -> Self {
        if service == STAFF_OWNER {
            Self::authoritative(pool)
        } else {
            Self::projection(pool)
        }
    }

    pub fn is_authoritative(&self) -> bool {
        self.authoritative
    }

    /// Ok if a token of `staff_id` carrying `token_version` may still be used.
    pub async fn check(&self, staff_id: Uuid, token_version: i32) -> Result<(), ApiError> {
        let row: Option<(i32, bool)> =
            sqlx::query_as("SELECT token_version, active FROM staff_access WHERE staff_id = $1")
                .bind(staff_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "checking staff access");
                    ApiError::Unavailable("Could not check your session; try again.".into())
                })?;
        match row {
            None if self.authoritative => {
                Err(ApiError::unauthorized("The account no longer exists."))
            }
            None => Ok(()),
            Some((_, false)) => Err(ApiError::unauthorized("This account is inactive.")),
            Some((current, true)) if token_version < current => Err(ApiError::unauthorized(
                "This session has ended. Please log in again.",
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Durable consumer name of a service's staff-access projection.
pub fn consumer_name(service: &str) -> String {
    format!("{service}-staff-access")
}

/// Subjects the projection listens to.
pub const FILTER: &str = "isp.core.staff.>";

/// `staff_access` as a [`Projection`]: `active` follows the newest snapshot by
/// `updatedAt`; the token version only grows, because a deleted member's last
/// `staff.updated` (Inactive) carries none. Core publishes no staff deletion
/// event (the Inactive snapshot stands for it), so there is no tombstone.
pub const PROJECTION: Projection = Projection::new("staff_access", &["token_version", "active"])
    .key("staff_id")
    .without_tombstone()
    .monotonic(&["token_version"]);

/// Keeps `staff_access` current from `staff.created` / `staff.updated`.
pub struct StaffAccessProjection;

impl EventHandler for StaffAccessProjection {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(s) = entity_change::<StaffSnapshot>(ev)? {
            PROJECTION
                .upsert(tx, &s, |row, s| {
                    row.bind(s.token_version).bind(s.status == "Active");
                })
                .await?;
        }
        Ok(())
    }
}
