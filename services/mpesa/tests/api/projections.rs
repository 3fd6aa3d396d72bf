//! M-Pesa's projections follow the shared rule (`isp_events::projection`).

use super::*;

#[tokio::test]
async fn mpesa_partners_ignore_older_snapshots_and_stay_deleted() {
    std::env::set_var("ISP_MPESA_C2B_REGISTER_AT_START", "false");
    let app = TestApp::spawn(&[isp_testkit::service!(svc_mpesa)]).await;
    isp_testkit::projection::ProjectionCase {
        app: &app,
        source: "core",
        service: "mpesa",
        durable: "mpesa-core",
        probe: "SELECT full_name, deleted FROM partners WHERE id = $1",
    }
    .check_tombstone(isp_testkit::fixtures::partner_snapshot)
    .await;
}
