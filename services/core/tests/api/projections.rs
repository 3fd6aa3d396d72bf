//! Core's projections (CRM's buildings with their caretaker links, NOC's
//! subnets) follow the shared rule (`isp_events::projection`).

use isp_testkit::fixtures::{building_snapshot, subnet_snapshot};
use isp_testkit::projection::ProjectionCase;
use isp_testkit::{service, TestApp};

#[tokio::test]
async fn crm_buildings_and_noc_subnets_ignore_older_snapshots_and_stay_deleted() {
    let app = TestApp::spawn(&[service!(svc_core)]).await;
    ProjectionCase {
        app: &app,
        source: "crm",
        service: "core",
        durable: "core-crm",
        probe: "SELECT name, deleted FROM crm_buildings WHERE id = $1",
    }
    .check_tombstone(building_snapshot)
    .await;
    ProjectionCase {
        app: &app,
        source: "noc",
        service: "core",
        durable: "core-noc",
        probe: "SELECT network, deleted FROM noc_subnets WHERE id = $1",
    }
    .check_tombstone(subnet_snapshot)
    .await;
}
