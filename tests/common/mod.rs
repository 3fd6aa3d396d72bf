//! Fixtures the cross-service tests share (each `tests/*.rs` is its own crate and
//! takes this module with `mod common;`): what needs the services' own types,
//! which `crates/testkit` does not depend on.
#![allow(dead_code)] // each test crate uses a part

use std::cell::RefCell;

use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_standin_sms::StandIns;
use isp_testkit::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use svc_notify::provider::africastalking::AfricasTalkingConfig;
use svc_notify::SmsProvider;

/// Notify sending SMS through the Africa's Talking stand-in `gw` (sender id
/// `sender`), as fast as it can, with delivery reports under `callback_token`.
pub fn notify_through_africastalking(
    gw: &StandIns,
    sender: &str,
    callback_token: &str,
) -> svc_notify::Settings {
    let o = gw.options();
    svc_notify::Settings::unthrottled(
        SmsProvider::AfricasTalking(AfricasTalkingConfig {
            username: o.at_username.clone(),
            api_key: o.at_api_key.clone(),
            sender_id: Some(sender.into()),
            base_url: gw.base_url.clone(),
        }),
        callback_token,
    )
}

/// A walk-in subscriber created in Billing (once Billing knows the plan named in
/// `body`), installed by the NOC's engineer `ne` and Active: Billing's answer to
/// the create (`doc` and the first `invoice`).
pub async fn installed_subscriber(app: &TestApp, admin: &str, ne: &str, body: Value) -> Value {
    let created = eventually(15, || async {
        let r = app
            .post("/api/billing/subscribers", admin, body.clone())
            .await;
        (r.status == StatusCode::CREATED).then_some(r)
    })
    .await
    .expect("Billing learns the plan and creates the walk-in subscriber");
    let sub = created.body["doc"]["id"].as_str().unwrap().to_string();
    let order = eventually(15, || async {
        let r = app
            .get(
                &format!("/api/noc/workOrders?where[subscriber][equals]={sub}"),
                ne,
            )
            .await;
        r.body["docs"][0]["id"].as_str().map(String::from)
    })
    .await
    .expect("installation work order");
    let r = app
        .patch(
            &format!("/api/noc/workOrders/{order}"),
            ne,
            json!({"status": "Completed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let active = eventually(15, || async {
        let r = app
            .get(&format!("/api/billing/subscribers/{sub}"), admin)
            .await;
        (r.body["status"] == "Active").then_some(())
    })
    .await;
    assert!(active.is_some(), "Billing activates after provisioning");
    created.body
}

thread_local! {
    // StartFns cannot capture; the stand-in's port is known at run time only, and
    // services start on the test's own thread.
    static NOTIFY: RefCell<Option<svc_notify::Settings>> = const { RefCell::new(None) };
}

/// The whole fleet, with Notify started with `notify` (e.g.
/// [`notify_through_africastalking`]) instead of its settings from the environment.
pub fn fleet_with_notify(notify: svc_notify::Settings) -> Vec<(ServiceInfo, StartFn)> {
    NOTIFY.with(|c| *c.borrow_mut() = Some(notify));
    let mut f: Vec<_> = isp::fleet()
        .into_iter()
        .filter(|(info, _)| info.name != "notify")
        .collect();
    f.push((svc_notify::INFO, |c| {
        let s = NOTIFY
            .with(|s| s.borrow().clone())
            .expect("notify settings");
        Box::pin(svc_notify::start_with(c, s))
    }));
    f
}
