//! Core over real HTTP, Postgres and NATS.

#[path = "api/access.rs"]
mod access;
#[path = "api/partners.rs"]
mod partners;
#[path = "api/plans.rs"]
mod plans;
#[path = "api/platform.rs"]
mod platform;
#[path = "api/projections.rs"]
mod projections;
#[path = "api/queries.rs"]
mod queries;
#[path = "api/sessions.rs"]
mod sessions;
#[path = "api/staff.rs"]
mod staff;

use isp_testkit::{service, TestApp};

async fn app() -> TestApp {
    TestApp::spawn(&[service!(svc_core)]).await
}
