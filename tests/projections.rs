//! wa-parser's projections (Core's partners, CRM's buildings) follow the shared
//! rule (`isp_events::projection`): the late same-timestamp update after a
//! deletion, and an older snapshot, change nothing.

use isp_testkit::fixtures::{building_snapshot, partner_snapshot};
use isp_testkit::projection::ProjectionCase;
use isp_testkit::{service, TestApp};

#[tokio::test]
async fn wa_parser_partners_and_buildings_ignore_older_snapshots_and_stay_deleted() {
    let app = TestApp::spawn(&[service!(svc_wa_parser)]).await;
    ProjectionCase {
        app: &app,
        source: "core",
        service: "wa-parser",
        durable: "wa-parser-core",
        probe: "SELECT full_name, deleted FROM partners WHERE id = $1",
    }
    .check_tombstone(partner_snapshot)
    .await;
    ProjectionCase {
        app: &app,
        source: "crm",
        service: "wa-parser",
        durable: "wa-parser-crm",
        probe: "SELECT name, deleted FROM buildings WHERE id = $1",
    }
    .check_tombstone(building_snapshot)
    .await;
}
