//! What every ISP service shares, written and tested once.
//!
//! - [`config`]: settings from environment variables, each with a working default.
//! - [`telemetry`]: tracing (readable locally, JSON when `ISP_LOG_FORMAT=json`).
//! - [`error`]: the one error type and its mapping onto the error JSON of docs/contract.md#http-api.
//! - [`db`]: one Postgres role and schema per service (least privilege), pools, migrations.
//! - [`auth`]: EdDSA JWTs signed by core and verified everywhere; roles; service tokens.
//! - [`query`]: Payload-style list queries (`limit`, `page`, `sort`, `where[field][op]`).
//! - [`collection`]: Payload-style collections: CRUD routes generated from a field
//!   table with per-role, per-field access, so eight services do not hand-write
//!   twenty sets of the same handlers.
//! - [`http`]: health, readiness, Prometheus metrics, OpenAPI + vendored Swagger UI,
//!   middleware and graceful serving.
//! - [`staff_access`]: logout, password, role and status changes end a staff
//!   member's tokens on every service, not just at core.
//! - [`phone`], [`money`]: the two value types every service parses at the edge.

pub mod auth;
pub mod client;
pub mod collection;
pub mod config;
pub mod context;
pub mod db;
pub mod error;
pub mod failing;
pub mod http;
pub mod idempotency;
pub mod line_items;
pub mod money;
pub mod openapi;
pub mod phone;
pub mod query;
pub mod runtime;
pub mod service;
pub mod staff_access;
pub mod telemetry;

pub use context::ServiceContext;
pub use error::{ApiError, ApiResult, FieldError};
