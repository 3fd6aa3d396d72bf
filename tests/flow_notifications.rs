//! Customer notifications across the fleet: the daily run invoices an Active
//! subscriber -> Support renders the invoice SMS from its template and asks Notify
//! -> Notify sends it through Africa's Talking (the stand-in in `standins/sms`) ->
//! the gateway's delivery report reaches Notify -> Support's message log shows the
//! SMS Delivered.

mod common;

use isp_standin_sms::{Options, StandIns};
use isp_testkit::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::json;

const AT_TOKEN: &str = "flow-notifications-at-token-31c9";

#[tokio::test]
async fn the_daily_runs_invoice_sms_is_rendered_sent_and_logged_delivered() {
    let gw = StandIns::start(Options::default()).await.unwrap();
    let app = TestApp::spawn(&common::fleet_with_notify(
        common::notify_through_africastalking(&gw, "ISPNET", AT_TOKEN),
    ))
    .await;
    gw.set_at_delivery_callback(format!(
        "{}/api/notify/callbacks/africastalking/{AT_TOKEN}/delivery",
        app.base
    ));
    let admin = app.admin_token().await;
    let (ne, _) = app.staff_token("Network Engineer").await;
    let (agent, _) = app.staff_token("Support Agent").await;

    // An installed, Active subscriber.
    let plan = app.create("/api/core/plans", &admin, json!({"name": "Home 10", "downloadSpeed": 10, "uploadSpeed": 5, "price": 2500, "billingCycle": "Monthly"})).await;
    let walk_in = json!({"firstName": "Wanjiru", "lastName": "Kamau", "mpesaNumber": "0722 555 111", "servicePlan": plan, "billingCycle": "Monthly"});
    let created = common::installed_subscriber(&app, &admin, &ne, walk_in).await;
    let sub = created["doc"]["id"].as_str().unwrap().to_string();
    let account = created["doc"]["accountNumber"]
        .as_str()
        .unwrap()
        .to_string();

    // The next period is due today (a run cannot be dated in the future).
    sqlx::query("UPDATE billing.subscribers SET next_due_date = current_date WHERE id = $1::uuid")
        .bind(&sub)
        .execute(&app.admin_pool().await)
        .await
        .unwrap();
    let r = app
        .post(
            "/api/billing/jobs/daily-run",
            &admin,
            json!({"date": app.ctx("billing").today().to_string()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["invoicesCreated"], 1, "{:?}", r.body);
    let invoices = app
        .get(
            &format!("/api/billing/invoices?where[subscriber][equals]={sub}&sort=-createdAt"),
            &admin,
        )
        .await;
    let run_invoice = invoices.body["docs"][0].clone();
    let number = run_invoice["invoiceNumber"].as_str().unwrap().to_string();

    // The SMS reaches Africa's Talking with the rendered text.
    let sms = eventually(30, || async {
        gw.sms()
            .into_iter()
            .find(|m| m.to.contains("+254722555111") && m.message.contains(&number))
    })
    .await
    .expect("the invoice SMS reached the gateway");
    assert!(
        sms.message
            .starts_with(&format!("Dear Wanjiru, invoice {number} for KES 2500.00"))
            && sms.message.contains(&format!("account {account}")),
        "{}",
        sms.message
    );

    // The delivery report comes back: the message log says Delivered.
    let logged = eventually(30, || async {
        let r = app
            .get(
                &format!(
                    "/api/support/messages?where[content][like]={number}&where[type][equals]=SMS"
                ),
                &agent,
            )
            .await;
        let doc = r.body["docs"][0].clone();
        (doc["status"] == "Delivered").then_some(doc)
    })
    .await;
    let logged = logged.unwrap_or_else(|| {
        panic!(
            "the message log never showed Delivered; callbacks: {:?}",
            gw.callbacks()
        )
    });
    assert_eq!(logged["recipient"], "+254722555111");
    assert_eq!(logged["triggerEvent"], "invoice.created");
    assert_eq!(logged["content"], sms.message.as_str());
    assert!(
        gw.callbacks().iter().any(|(_, code)| *code == 200),
        "{:?}",
        gw.callbacks()
    );
}
