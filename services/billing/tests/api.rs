//! Billing over real HTTP, Postgres and NATS, with Core for staff, tokens and plans.
//! Each test names the rule (docs/billing.md) or the access line it proves.

#[path = "api/projections.rs"]
mod projections;

use chrono::NaiveDate;
use isp_events::CloudEvent;
use isp_testkit::fixtures::subscriber_body;
use isp_testkit::{eventually, service, Res, ServiceInfo, StartFn, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// Billing's defaults, but runs are started by the tests, not by the clock.
fn options() -> svc_billing::Options {
    let mut o = svc_billing::Options::default();
    o.schedule.enabled = false;
    o
}

fn billing() -> (ServiceInfo, StartFn) {
    (svc_billing::INFO, |c| {
        Box::pin(svc_billing::start_with(c, options()))
    })
}

async fn app() -> TestApp {
    TestApp::spawn(&[service!(svc_core), billing()]).await
}

/// Billing started with other settings (given per app, never through the
/// process's environment, which tests running side by side share).
async fn app_with(billing: StartFn) -> TestApp {
    TestApp::spawn(&[service!(svc_core), (svc_billing::INFO, billing)]).await
}

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// Creates a plan through Core and waits until Billing's projection has it.
async fn plan(app: &TestApp, admin: &str, extra: Value) -> String {
    let id = app.create_plan(admin, extra).await;
    app.wait_for(&format!(
        "SELECT count(*) FROM billing.plans WHERE id = '{id}'"
    ))
    .await;
    id
}

async fn create_sub(app: &TestApp, token: &str, body: Value) -> Res {
    app.post("/api/billing/subscribers", token, body).await
}

/// Creates a subscriber and makes it Active with `next_due` directly in the
/// database (provisioning itself is tested through the NOC event).
async fn active_sub(app: &TestApp, token: &str, plan: &str, next_due: &str) -> (String, String) {
    let r = create_sub(app, token, subscriber_body(plan)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let first_invoice = r.body["invoice"]["id"].as_str().unwrap().to_string();
    app.sql(&format!(
        "UPDATE billing.subscribers SET status = 'Active', next_due_date = '{next_due}',
             billing_anchor_day = extract(day FROM '{next_due}'::date) WHERE id = '{id}'"
    ))
    .await;
    (id, first_invoice)
}

async fn run(app: &TestApp, admin: &str, date: &str) -> Value {
    let r = app
        .post("/api/billing/jobs/daily-run", admin, json!({"date": date}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["doc"].clone()
}

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    let r = app.get(path, token).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    r.body
}

// ---- subscribers ------------------------------------------------------------------

#[tokio::test]
async fn creating_a_subscriber_creates_the_first_invoice_and_publishes_events() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": "2500.00"})).await;
    let (building, unit, lead) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut body = subscriber_body(&plan);
    body["serviceLocation"] = json!(unit);
    body["building"] = json!(building);
    body["lead"] = json!(lead);
    body["oneOffCharges"] = json!([{"description": "Installation Fee", "quantity": 1, "price": 3000},
                                   {"description": "Router Purchase", "quantity": 2, "price": "1999.50"}]);
    let crm = app.service_token("crm", &["billing.subscribers.create"]);
    let r = create_sub(&app, &crm, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let doc = &r.body["doc"];
    assert_eq!(doc["status"], "Pending Installation");
    assert_eq!(doc["mpesaNumber"], "+254712345678");
    assert_eq!(doc["building"], building.to_string());
    assert_eq!(doc["serviceLocation"], unit.to_string());
    assert_eq!(doc["lead"], lead.to_string());
    let acct = doc["accountNumber"].as_str().unwrap();
    assert!(
        acct.len() <= 8 && acct.chars().all(|c| c.is_ascii_digit()),
        "{acct}"
    );
    let inv = &r.body["invoice"];
    assert_eq!(inv["amountDue"], "9499.00");
    assert_eq!(inv["status"], "Unpaid");
    assert!(inv["invoiceNumber"].as_str().unwrap().starts_with("INV-"));
    assert_eq!(inv["lineItems"].as_array().unwrap().len(), 3);
    assert_eq!(inv["subscriber"], doc["id"]);
    // CRM's token creates subscribers but is not shown their balance; Admin is.
    assert!(doc.get("accountBalance").is_none(), "{doc}");
    let id = doc["id"].as_str().unwrap();
    assert_eq!(
        get(&app, &admin, &format!("/api/billing/subscribers/{id}")).await["accountBalance"],
        "-9499.00"
    );
    // A second subscriber gets the next numbers.
    let r2 = create_sub(&app, &admin, subscriber_body(&plan)).await;
    assert_ne!(r2.body["doc"]["accountNumber"], doc["accountNumber"]);
    let n = |v: &Value| {
        v["invoiceNumber"].as_str().unwrap()[4..]
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(n(&r2.body["invoice"]), n(inv) + 1);
    assert_eq!(app.outbox_count("billing", "subscriber.created").await, 2);
    assert_eq!(app.outbox_count("billing", "invoice.created").await, 2);
    let snap: Value = app.scalar(&format!("SELECT payload->'data' FROM billing.outbox WHERE type = 'subscriber.created' AND payload->>'subject' = '{}'", doc["id"].as_str().unwrap())).await;
    assert_eq!(snap["leadId"], lead.to_string());
    assert_eq!(snap["building"], building.to_string());
    assert!(snap.get("accountBalance").is_none());
    // The lead can be converted once.
    let mut again = subscriber_body(&plan);
    again["lead"] = json!(lead);
    let r = create_sub(&app, &crm, again).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("lead"));
}

#[tokio::test]
async fn subscriber_creation_is_idempotent_and_limited_to_admin_billing_and_scoped_services() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({})).await;
    let crm = app.service_token("crm", &["billing.subscribers.create"]);
    let post = |token: String, key: &'static str, body: Value| {
        let req = app
            .http
            .post(format!("{}/api/billing/subscribers", app.base))
            .header("authorization", format!("JWT {token}"))
            .header("idempotency-key", key)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s1, b1) = post(crm.clone(), "lead-1", subscriber_body(&plan)).await;
    let (s2, b2) = post(crm.clone(), "lead-1", subscriber_body(&plan)).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(b1, b2);
    let mut other = subscriber_body(&plan);
    other["firstName"] = json!("Someone Else");
    let (s3, b3) = post(crm.clone(), "lead-1", other).await;
    assert_eq!(s3, StatusCode::CONFLICT, "{b3:?}");
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.subscribers")
            .await,
        1
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.invoices")
            .await,
        1
    );
    // Billing Manager may (walk-in); Sales Agent only through CRM; a service
    // without the scope may not.
    let (bm, _) = app.staff_token("Billing Manager").await;
    assert_eq!(
        create_sub(&app, &bm, subscriber_body(&plan)).await.status,
        StatusCode::CREATED
    );
    for role in [
        "Sales Agent",
        "Support Agent",
        "Network Engineer",
        "Technician",
    ] {
        let (t, _) = app.staff_token(role).await;
        assert_eq!(
            create_sub(&app, &t, subscriber_body(&plan)).await.status,
            StatusCode::FORBIDDEN,
            "{role}"
        );
    }
    let wrong = app.service_token("crm", &["billing.subscribers.read"]);
    assert_eq!(
        create_sub(&app, &wrong, subscriber_body(&plan))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn bad_subscriber_input_is_rejected_naming_the_field_and_writes_nothing() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan_id = plan(&app, &admin, json!({})).await;
    let disabled = plan(&app, &admin, json!({"planEnabled": false})).await;
    let closed = plan(&app, &admin, json!({"activeForNewSignups": false})).await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"servicePlan": Uuid::new_v4()}),
            StatusCode::BAD_REQUEST,
            "servicePlan",
        ),
        (
            json!({"servicePlan": "nope"}),
            StatusCode::BAD_REQUEST,
            "servicePlan",
        ),
        (
            json!({"servicePlan": disabled}),
            StatusCode::CONFLICT,
            "servicePlan",
        ),
        (
            json!({"servicePlan": closed}),
            StatusCode::CONFLICT,
            "servicePlan",
        ),
        (
            json!({"mpesaNumber": "12"}),
            StatusCode::BAD_REQUEST,
            "mpesaNumber",
        ),
        (
            json!({"mpesaNumber": null}),
            StatusCode::BAD_REQUEST,
            "mpesaNumber",
        ),
        (
            json!({"firstName": "  "}),
            StatusCode::BAD_REQUEST,
            "firstName",
        ),
        (
            json!({"email": "not-an-email"}),
            StatusCode::BAD_REQUEST,
            "email",
        ),
        (
            json!({"billingCycle": "Weekly"}),
            StatusCode::BAD_REQUEST,
            "billingCycle",
        ),
        (
            json!({"trialEndDate": "2026-02-30"}),
            StatusCode::BAD_REQUEST,
            "trialEndDate",
        ),
        (
            json!({"building": "x"}),
            StatusCode::BAD_REQUEST,
            "building",
        ),
        (
            json!({"accountBalance": 5}),
            StatusCode::BAD_REQUEST,
            "accountBalance",
        ),
        (
            json!({"status": "Active"}),
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            json!({"oneOffCharges": "fee"}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges",
        ),
        (
            json!({"oneOffCharges": [{"description": "Fee", "quantity": 0, "price": 1}]}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges.0.quantity",
        ),
        (
            json!({"oneOffCharges": [{"description": "Fee", "quantity": 1, "price": -5}]}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges.0.price",
        ),
        (
            json!({"oneOffCharges": [{"description": "Fee", "quantity": 1, "price": "1.234"}]}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges.0.price",
        ),
        (
            json!({"oneOffCharges": [{"quantity": 1, "price": 1}]}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges.0.description",
        ),
    ];
    for (patch, status, path) in cases {
        let mut body = subscriber_body(&plan_id);
        body.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        let r = create_sub(&app, &admin, body).await;
        assert_eq!(r.status, status, "{patch}: {:?}", r.body);
        assert!(
            r.error_paths().iter().any(|p| p == path),
            "{patch}: {:?}",
            r.body
        );
    }
    let r = create_sub(&app, &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for f in [
        "firstName",
        "lastName",
        "mpesaNumber",
        "servicePlan",
        "billingCycle",
    ] {
        assert!(r.error_paths().iter().any(|p| p == f), "{f}");
    }
    let r = app
        .request(
            reqwest::Method::POST,
            "/api/billing/subscribers",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for t in ["subscribers", "invoices", "outbox"] {
        assert_eq!(
            app.scalar::<i64>(&format!("SELECT count(*) FROM billing.{t}"))
                .await,
            0,
            "{t}"
        );
    }
}

#[tokio::test]
async fn roles_see_and_edit_only_their_subscriber_fields_and_finance_stays_with_admin_and_billing()
{
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let inv = r.body["invoice"]["id"].as_str().unwrap().to_string();
    let path = format!("/api/billing/subscribers/{id}");
    let (bm, _) = app.staff_token("Billing Manager").await;
    let doc = get(&app, &bm, &path).await;
    assert_eq!(doc["accountBalance"], "-2500.00");
    for role in ["Sales Agent", "Support Agent", "Network Engineer"] {
        let (t, _) = app.staff_token(role).await;
        let doc = get(&app, &t, &path).await;
        assert_eq!(doc["firstName"], "Amina", "{role}");
        for hidden in [
            "accountBalance",
            "nextDueDate",
            "gracePeriodEndDate",
            "trialEndDate",
        ] {
            assert!(doc.get(hidden).is_none(), "{role} sees {hidden}");
        }
        let list = get(&app, &t, "/api/billing/subscribers").await;
        assert!(list["docs"][0].get("accountBalance").is_none());
        // Filtering on a hidden field would reveal it.
        let r = app
            .get(
                "/api/billing/subscribers?where[accountBalance][less_than]=0",
                &t,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{role}");
        for coll in ["invoices", "payments", "expenses", "dailyRuns"] {
            let r = app.get(&format!("/api/billing/{coll}"), &t).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{role} {coll}");
        }
        assert_eq!(
            app.get(&format!("/api/billing/invoices/{inv}"), &t)
                .await
                .status,
            StatusCode::FORBIDDEN
        );
        let r = app.patch(&path, &t, json!({"addressNotes": "x"})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role} edits");
    }
    let (tech, _) = app.staff_token("Technician").await;
    assert_eq!(app.get(&path, &tech).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/api/billing/subscribers", &tech).await.status,
        StatusCode::FORBIDDEN
    );
    // Billing Manager edits financial fields only.
    let r = app
        .patch(
            &path,
            &bm,
            json!({"gracePeriodEndDate": "2026-12-31", "mpesaNumber": "0733000111"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["gracePeriodEndDate"], "2026-12-31");
    for (field, value) in [
        ("firstName", json!("X")),
        ("addressNotes", json!("x")),
        ("servicePlan", json!(plan)),
    ] {
        let r = app.patch(&path, &bm, json!({ field: value })).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{field}");
        assert_eq!(r.error_path(), Some(field));
    }
    // Technical and derived fields belong to no one here.
    for (field, value) in [
        ("assignedIp", json!("10.0.0.1")),
        ("connectionType", json!("PPPoE")),
        ("accountBalance", json!(0)),
        ("accountNumber", json!("1")),
    ] {
        let r = app.patch(&path, &admin, json!({ field: value })).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{field}");
    }
    // Bad input on PATCH names the field; a Pending subscriber is not made Active by hand.
    let r = app
        .patch(&path, &admin, json!({"gracePeriodEndDate": "soon"}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("gracePeriodEndDate"))
    );
    let r = app.patch(&path, &admin, json!({"status": "Active"})).await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("status"))
    );
    let r = app
        .patch(&path, &admin, json!({"servicePlan": Uuid::new_v4()}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("servicePlan"))
    );
    assert_eq!(
        app.delete(&path, &admin).await.status,
        StatusCode::FORBIDDEN
    );
    // Deactivation is final and announced.
    let r = app
        .patch(&path, &admin, json!({"status": "Deactivated"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        app.outbox_count("billing", "subscriber.deactivated").await,
        1
    );
    let r = app.patch(&path, &admin, json!({"status": "Active"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_cycle_changed_before_installation_applies_after_the_first_paid_period() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    // Sold Monthly: the first invoice is one month's fee.
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let id: Uuid = r.body["doc"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(r.body["invoice"]["amountDue"], "1000.00");
    // Before the technician comes, the customer switches to Quarterly.
    let path = format!("/api/billing/subscribers/{id}");
    let r = app
        .patch(&path, &admin, json!({"billingCycle": "Quarterly"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Activated 2026-01-31 (Nairobi): the paid first period is one month, not three.
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-31T07:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    app.publish(
        "noc",
        &isp_events::payloads::SubscriberProvisioned {
            subscriber_id: id,
            connection_type: isp_events::options::ConnectionType::Pppoe,
            assigned_ip: None,
            radius_username: "acct".into(),
            at,
        },
    )
    .await;
    let doc = eventually(15, || async {
        let doc = get(&app, &admin, &path).await;
        (doc["status"] == "Active").then_some(doc)
    })
    .await
    .expect("activated");
    assert_eq!(doc["nextDueDate"], "2026-02-28");
    assert_eq!(doc["billingCycle"], "Quarterly");
    // From there on, quarterly periods at three months' fee.
    run(&app, &admin, "2026-02-28").await;
    let (amount, period_end, _, _) = period_invoice(&app, &id.to_string(), "2026-02-28").await;
    assert_eq!(amount, "3000.00");
    assert_eq!(period_end, d("2026-05-31"));
}

#[tokio::test]
async fn noc_provisioning_activates_the_subscriber_and_mirrors_network_fields() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({})).await;
    let mut body = subscriber_body(&plan);
    body["billingCycle"] = json!("Quarterly");
    let r = create_sub(&app, &admin, body).await;
    let id: Uuid = r.body["doc"]["id"].as_str().unwrap().parse().unwrap();
    // 2026-01-31 10:00 Nairobi.
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-31T07:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let ev = isp_events::payloads::SubscriberProvisioned {
        subscriber_id: id,
        connection_type: isp_events::options::ConnectionType::Pppoe,
        assigned_ip: Some("100.64.0.7".into()),
        radius_username: "acct".into(),
        at,
    };
    app.publish("noc", &ev).await;
    app.publish("noc", &ev).await;
    let path = format!("/api/billing/subscribers/{id}");
    let doc = eventually(15, || async {
        let doc = get(&app, &admin, &path).await;
        (doc["status"] == "Active").then_some(doc)
    })
    .await
    .expect("activated");
    assert_eq!(doc["connectionType"], "PPPoE");
    assert_eq!(doc["assignedIp"], "100.64.0.7");
    // First period starts at activation; the quarterly cycle keeps the month end.
    assert_eq!(doc["nextDueDate"], "2026-04-30");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.outbox_count("billing", "subscriber.activated").await, 1);
    // Network changes later are mirrored too.
    app.publish(
        "noc",
        &isp_events::payloads::SubscriberNetworkUpdated {
            subscriber_id: id,
            connection_type: isp_events::options::ConnectionType::StaticIp,
            assigned_ip: Some("41.90.1.2".into()),
            router: None,
            at: Some(chrono::Utc::now()),
        },
    )
    .await;
    let ok = eventually(15, || async {
        (get(&app, &admin, &path).await["assignedIp"] == "41.90.1.2").then_some(())
    })
    .await;
    assert!(ok.is_some());
    // NOC releases the address; an older change (from an hour ago) arrives late
    // and must not bring the address back.
    let pool = app.admin_pool().await;
    let processed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM billing.processed_events WHERE consumer = 'billing-noc'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = processed().await;
    for (ip, ago) in [(None, 0), (Some("41.90.1.99"), 3600)] {
        app.publish(
            "noc",
            &isp_events::payloads::SubscriberNetworkUpdated {
                subscriber_id: id,
                connection_type: isp_events::options::ConnectionType::StaticIp,
                assigned_ip: ip.map(Into::into),
                router: None,
                at: Some(chrono::Utc::now() - chrono::Duration::seconds(ago)),
            },
        )
        .await;
    }
    let all_processed = eventually(15, || async {
        (processed().await == before + 2).then_some(())
    })
    .await;
    assert!(
        all_processed.is_some(),
        "NOC's events were not all processed"
    );
    assert!(
        get(&app, &admin, &path).await["assignedIp"].is_null(),
        "a stale network_updated brought back a released address"
    );
}

// ---- invoices and payments ----------------------------------------------------------

async fn pay(
    app: &TestApp,
    token: &str,
    invoice: &str,
    amount: Value,
    reference: &str,
    method: &str,
) -> Res {
    app.post(
        "/api/billing/payments",
        token,
        json!({"paymentReference": reference, "invoice": invoice, "amountPaid": amount,
               "paymentMethod": method, "paymentDate": "2026-11-20"}),
    )
    .await
}

#[tokio::test]
async fn partial_full_and_over_payments_settle_invoices_balance_and_next_due_date() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-01-31").await;
    let sub_path = format!("/api/billing/subscribers/{sub}");
    // The first invoice (1000) is paid in two parts.
    let r = pay(&app, &bm, &first, json!(400), "CASH-1", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["subscriber"], sub);
    let inv = get(&app, &bm, &format!("/api/billing/invoices/{first}")).await;
    assert_eq!(
        (inv["status"].clone(), inv["amountPaid"].clone()),
        (json!("Unpaid"), json!("400.00"))
    );
    assert_eq!(get(&app, &bm, &sub_path).await["accountBalance"], "-600.00");
    let r = pay(
        &app,
        &bm,
        &first,
        json!("600.00"),
        "BANK-1",
        "Bank Transfer",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let inv = get(&app, &bm, &format!("/api/billing/invoices/{first}")).await;
    assert_eq!(inv["status"], "Paid");
    assert_eq!(get(&app, &bm, &sub_path).await["accountBalance"], "0.00");
    assert_eq!(app.outbox_count("billing", "payment.received").await, 2);
    // The run invoices the period from Jan 31; paying it moves nextDueDate to Feb 28.
    run(&app, &admin, "2026-01-31").await;
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-01-31'")).await;
    // Over-payment: 1500 on a 1000 invoice leaves 500 credit.
    let r = pay(&app, &bm, &period, json!(1500), "CASH-2", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let doc = get(&app, &bm, &sub_path).await;
    assert_eq!(doc["nextDueDate"], "2026-02-28");
    assert_eq!(doc["accountBalance"], "500.00");
    let ev: Value = app.scalar("SELECT payload->'data' FROM billing.outbox WHERE type = 'payment.received' ORDER BY created_at DESC, id DESC LIMIT 1").await;
    assert_eq!(ev["accountBalance"], "500.00");
    // The credit settles half of the next invoice: 500 of 1000.
    run(&app, &admin, "2026-02-28").await;
    let (status, paid): (String, String) = {
        let pool = app.admin_pool().await;
        sqlx::query_as(&format!("SELECT status, amount_paid::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-02-28'"))
            .fetch_one(&pool).await.unwrap()
    };
    assert_eq!((status.as_str(), paid.as_str()), ("Unpaid", "500.00"));
    assert_eq!(get(&app, &bm, &sub_path).await["accountBalance"], "-500.00");
    // Paying a Paid invoice again is an over-payment: it settles the open one.
    let r = pay(&app, &bm, &first, json!(50), "CASH-3", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(get(&app, &bm, &sub_path).await["accountBalance"], "-450.00");
    let paid: String = app.scalar(&format!("SELECT amount_paid::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-02-28'")).await;
    assert_eq!(paid, "550.00");
    assert_eq!(
        invoice_state(&app, &first).await,
        ("Paid".into(), "1000.00".into())
    );
}

#[tokio::test]
async fn payment_rules_reject_duplicates_bad_input_and_unpayable_invoices() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let inv = r.body["invoice"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        pay(&app, &bm, &inv, json!(100), "R1", "Cash").await.status,
        StatusCode::CREATED
    );
    // The same receipt is never counted twice (per method).
    let r = pay(&app, &bm, &inv, json!(100), "R1", "Cash").await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("paymentReference"))
    );
    assert_eq!(
        pay(&app, &bm, &inv, json!(100), "R1", "Bank Transfer")
            .await
            .status,
        StatusCode::CREATED
    );
    // M-Pesa receipts come from the M-Pesa service, not the Billing Manager.
    let r = pay(&app, &bm, &inv, json!(100), "NLJ7RT61SV", "Mpesa").await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::FORBIDDEN, Some("paymentMethod"))
    );
    let mpesa = app.service_token("mpesa", &["billing.payments.create"]);
    assert_eq!(
        pay(&app, &mpesa, &inv, json!(100), "NLJ7RT61SV", "Mpesa")
            .await
            .status,
        StatusCode::CREATED
    );
    let bad: Vec<(Value, &str)> = vec![
        (json!({"amountPaid": 0}), "amountPaid"),
        (json!({"amountPaid": -1}), "amountPaid"),
        (json!({"amountPaid": "1.001"}), "amountPaid"),
        (json!({"amountPaid": "abc"}), "amountPaid"),
        (json!({"paymentMethod": "Cheque"}), "paymentMethod"),
        (json!({"paymentDate": "2099-01-01"}), "paymentDate"),
        (json!({"paymentDate": "yesterday"}), "paymentDate"),
        (json!({"invoice": Uuid::new_v4()}), "invoice"),
        (json!({"invoice": "x"}), "invoice"),
        (json!({"paymentReference": ""}), "paymentReference"),
        (json!({"subscriber": Uuid::new_v4()}), "subscriber"),
    ];
    for (patch, path) in bad {
        let mut body = json!({"paymentReference": format!("X-{}", Uuid::new_v4().simple()), "invoice": inv,
            "amountPaid": 10, "paymentMethod": "Cash", "paymentDate": "2026-11-20"});
        body.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        let r = app.post("/api/billing/payments", &bm, body).await;
        assert!(
            matches!(r.status, StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN),
            "{patch}: {:?}",
            r.body
        );
        assert_eq!(r.error_path(), Some(path), "{patch}: {:?}", r.body);
    }
    let r = app.post("/api/billing/payments", &bm, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Payments are a ledger: no edits, no deletes.
    let pid: String = app
        .scalar("SELECT id::text FROM billing.payments LIMIT 1")
        .await;
    assert_eq!(
        app.patch(
            &format!("/api/billing/payments/{pid}"),
            &bm,
            json!({"amountPaid": 1})
        )
        .await
        .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        app.delete(&format!("/api/billing/payments/{pid}"), &admin)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // A cancelled or draft invoice cannot be paid.
    let sub: String = app
        .scalar("SELECT id::text FROM billing.subscribers LIMIT 1")
        .await;
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "status": "Draft",
        "lineItems": [{"description": "Relocation", "quantity": 1, "price": 500}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let draft = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = pay(&app, &bm, &draft, json!(10), "R9", "Cash").await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("invoice"))
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.payments")
            .await,
        3
    );
}

#[tokio::test]
async fn invoices_compute_amount_due_and_allow_only_sensible_transitions() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let sub = r.body["doc"]["id"].as_str().unwrap().to_string();
    let first = r.body["invoice"]["id"].as_str().unwrap().to_string();
    let items = json!([{"description": "Relocation", "quantity": 2, "price": "250.50"}, {"description": "Cable", "quantity": 1, "price": 99}]);
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": items}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let inv = r.body["doc"].clone();
    assert_eq!(inv["amountDue"], "600.00");
    assert_eq!(inv["status"], "Unpaid");
    let path = format!("/api/billing/invoices/{}", inv["id"].as_str().unwrap());
    assert_eq!(
        get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await["accountBalance"],
        "-1600.00"
    );
    // amountDue is never accepted from the client.
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": items, "amountDue": 1}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::FORBIDDEN, Some("amountDue"))
    );
    let bad: Vec<(Value, &str)> = vec![
        (json!({"lineItems": []}), "lineItems"),
        (json!({"lineItems": "x"}), "lineItems"),
        (
            json!({"lineItems": [{"description": "x", "quantity": 1.5, "price": 1}]}),
            "lineItems.0.quantity",
        ),
        (json!({"subscriber": Uuid::new_v4()}), "subscriber"),
        (json!({"dueDate": "2026-13-01"}), "dueDate"),
        (json!({"status": "Paid"}), "status"),
        (json!({"status": "Bogus"}), "status"),
    ];
    for (patch, field) in bad {
        let mut body = json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": items});
        body.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        let r = app.post("/api/billing/invoices", &bm, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{patch}: {:?}", r.body);
        assert_eq!(r.error_path(), Some(field), "{patch}");
    }
    // Editing line items recomputes the amount and the balance.
    let r = app
        .patch(
            &path,
            &bm,
            json!({"lineItems": [{"description": "Relocation", "quantity": 1, "price": 100}]}),
        )
        .await;
    assert_eq!(r.body["doc"]["amountDue"], "100.00");
    assert_eq!(
        get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await["accountBalance"],
        "-1100.00"
    );
    for (status, code) in [
        ("Paid", StatusCode::CONFLICT),
        ("Overdue", StatusCode::CONFLICT),
        ("Draft", StatusCode::CONFLICT),
    ] {
        let r = app.patch(&path, &bm, json!({"status": status})).await;
        assert_eq!(
            (r.status, r.error_path()),
            (code, Some("status")),
            "{status}"
        );
    }
    assert_eq!(app.delete(&path, &bm).await.status, StatusCode::CONFLICT);
    // Cancelling gives the charge back; a cancelled invoice is final.
    let r = app.patch(&path, &bm, json!({"status": "Cancelled"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await["accountBalance"],
        "-1000.00"
    );
    assert_eq!(
        app.patch(&path, &bm, json!({"status": "Unpaid"}))
            .await
            .status,
        StatusCode::CONFLICT
    );
    // A paid invoice cannot be edited.
    pay(&app, &bm, &first, json!(1000), "P1", "Cash").await;
    let r = app
        .patch(
            &format!("/api/billing/invoices/{first}"),
            &bm,
            json!({"dueDate": "2027-01-01"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = app
        .patch(
            &format!("/api/billing/invoices/{first}"),
            &bm,
            json!({"status": "Cancelled"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // A draft is free to delete; invoice numbers keep counting.
    let r = app.post("/api/billing/invoices", &bm, json!({"subscriber": sub, "dueDate": "2026-12-01", "status": "Draft", "lineItems": items})).await;
    let draft = r.body["doc"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await["accountBalance"],
        "0.00"
    );
    assert_eq!(
        app.delete(&format!("/api/billing/invoices/{draft}"), &bm)
            .await
            .status,
        StatusCode::OK
    );
}

// ---- the daily run -------------------------------------------------------------------

#[tokio::test]
async fn daily_run_invoices_each_due_subscriber_once_per_period_even_when_repeated_or_concurrent() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (due, _) = active_sub(&app, &admin, &plan, "2026-10-25").await;
    let (missed, _) = active_sub(&app, &admin, &plan, "2026-10-20").await; // a missed day
    let (later, _) = active_sub(&app, &admin, &plan, "2026-10-26").await;
    let (trial, _) = active_sub(&app, &admin, &plan, "2026-10-25").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET trial_end_date = '2026-10-30' WHERE id = '{trial}'"
    ))
    .await;
    let (suspended, _) = active_sub(&app, &admin, &plan, "2026-10-25").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET status = 'Suspended' WHERE id = '{suspended}'"
    ))
    .await;
    let pending = create_sub(&app, &admin, subscriber_body(&plan)).await.body["doc"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.sql(&format!(
        "UPDATE billing.subscribers SET next_due_date = '2026-10-01' WHERE id = '{pending}'"
    ))
    .await;

    // Two runs at once (two replicas), then the same date again.
    let (a, b) = tokio::join!(
        run(&app, &admin, "2026-10-25"),
        run(&app, &admin, "2026-10-25")
    );
    let created = a["invoicesCreated"].as_i64().unwrap() + b["invoicesCreated"].as_i64().unwrap();
    assert_eq!(created, 2);
    assert_eq!(run(&app, &admin, "2026-10-25").await["invoicesCreated"], 0);
    let count = |id: String| {
        let app = &app;
        async move {
            app.scalar::<i64>(&format!("SELECT count(*) FROM billing.invoices WHERE subscriber_id = '{id}' AND period_start IS NOT NULL")).await
        }
    };
    assert_eq!(count(due.clone()).await, 1);
    assert_eq!(count(missed.clone()).await, 1);
    assert_eq!(count(later).await, 0);
    assert_eq!(count(trial.clone()).await, 0, "on an active trial");
    assert_eq!(count(suspended).await, 0);
    assert_eq!(count(pending).await, 0);
    let (ps, pe, due_date, amount): (NaiveDate, NaiveDate, NaiveDate, String) = {
        let pool = app.admin_pool().await;
        sqlx::query_as(&format!("SELECT period_start, period_end, due_date, amount_due::text FROM billing.invoices WHERE subscriber_id = '{missed}' AND period_start IS NOT NULL"))
            .fetch_one(&pool).await.unwrap()
    };
    // The missed period keeps its dates but is due on the run date (payment terms
    // 0), so the catch-up cannot make it Overdue in the run that creates it.
    assert_eq!(
        (ps, pe, due_date, amount.as_str()),
        (d("2026-10-20"), d("2026-11-20"), d("2026-10-25"), "1000.00")
    );
    assert_eq!(app.outbox_count("billing", "invoice.created").await, 6 + 2);
    // After the trial the subscriber is billed from the day after it: a period
    // never starts inside the trial.
    assert!(
        run(&app, &admin, "2026-11-01").await["invoicesCreated"]
            .as_i64()
            .unwrap()
            >= 1
    );
    assert_eq!(count(trial.clone()).await, 1);
    let (amount, end, due_date, _) = period_invoice(&app, &trial, "2026-10-31").await;
    assert_eq!(
        (amount.as_str(), end, due_date),
        ("1000.00", d("2026-11-30"), d("2026-11-01"))
    );
    // Invoice numbers stay unique and sequential.
    let dupes: i64 = app
        .scalar("SELECT count(*) - count(DISTINCT invoice_number) FROM billing.invoices")
        .await;
    assert_eq!(dupes, 0);
}

#[tokio::test]
async fn daily_run_marks_overdue_suspends_unless_grace_and_logs_each_run() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (plain, _) = active_sub(&app, &admin, &plan, "2026-12-20").await;
    let (graced, _) = active_sub(&app, &admin, &plan, "2026-12-20").await;
    let (grace_over, _) = active_sub(&app, &admin, &plan, "2026-12-20").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET grace_period_end_date = '2026-10-31' WHERE id = '{graced}'"
    ))
    .await;
    app.sql(&format!("UPDATE billing.subscribers SET grace_period_end_date = '2026-10-26' WHERE id = '{grace_over}'")).await;
    // Their first invoices fell due on 2026-10-25: Overdue from the day after.
    app.sql("UPDATE billing.invoices SET due_date = '2026-10-25'")
        .await;
    let report = run(&app, &admin, "2026-10-25").await;
    assert_eq!(
        (
            report["invoicesOverdue"].as_i64(),
            report["subscribersSuspended"].as_i64()
        ),
        (Some(0), Some(0))
    );
    let report = run(&app, &admin, "2026-10-26").await;
    assert_eq!(report["invoicesOverdue"], 3);
    assert_eq!(report["subscribersSuspended"], 2);
    assert_eq!(report["runDate"], "2026-10-26");
    assert!(report["durationMs"].as_i64().is_some());
    let status = |id: String| {
        let app = &app;
        async move {
            app.scalar::<String>(&format!(
                "SELECT status FROM billing.subscribers WHERE id = '{id}'"
            ))
            .await
        }
    };
    assert_eq!(status(plain.clone()).await, "Suspended");
    assert_eq!(
        status(grace_over).await,
        "Suspended",
        "grace ended on the run date"
    );
    assert_eq!(
        status(graced.clone()).await,
        "Active",
        "grace in the future"
    );
    assert_eq!(app.outbox_count("billing", "subscriber.suspended").await, 2);
    assert_eq!(app.outbox_count("billing", "invoice.overdue").await, 3);
    let ev: Value = app
        .scalar("SELECT payload FROM billing.outbox WHERE type = 'subscriber.suspended' LIMIT 1")
        .await;
    assert!(ev["data"]["reason"].as_str().unwrap().contains("INV-"));
    assert_eq!(ev["source"], "/isp/billing");
    // Once the grace period passes, the next run suspends.
    assert_eq!(
        run(&app, &admin, "2026-11-01").await["subscribersSuspended"],
        1
    );
    assert_eq!(status(graced).await, "Suspended");
    // The run log: Admin and Billing Manager read it; others may not; only Admin runs it.
    let (bm, _) = app.staff_token("Billing Manager").await;
    let log = get(&app, &bm, "/api/billing/dailyRuns?sort=-runDate").await;
    assert_eq!(log["totalDocs"], 3);
    assert_eq!(log["docs"][0]["runDate"], "2026-11-01");
    let r = app
        .post(
            "/api/billing/jobs/daily-run",
            &bm,
            json!({"date": "2026-12-01"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (support, _) = app.staff_token("Support Agent").await;
    assert_eq!(
        app.get("/api/billing/dailyRuns", &support).await.status,
        StatusCode::FORBIDDEN
    );
    for body in [
        json!({"date": "2026-02-30"}),
        json!({"date": 20261201}),
        json!({"when": "2026-12-01"}),
    ] {
        let r = app
            .post("/api/billing/jobs/daily-run", &admin, body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
    }
    // Not ahead of time: tomorrow (in the ISP's time zone) is refused, naming date.
    let tomorrow = (today() + chrono::Days::new(1)).to_string();
    let r = app
        .post(
            "/api/billing/jobs/daily-run",
            &admin,
            json!({ "date": tomorrow }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("date")),
        "{:?}",
        r.body
    );
    assert_eq!(
        run(&app, &admin, &today().to_string()).await["runDate"],
        today().to_string()
    );
    // Runs start through /dailyRuns/run only: the log itself takes no writes.
    let r = app.post("/api/billing/dailyRuns", &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // Events written by set-based SQL honour the same contract as the typed ones.
    use isp_events::payloads::*;
    let pool = app.admin_pool().await;
    let rows: Vec<(String, String, Value)> =
        sqlx::query_as("SELECT subject, type, payload FROM billing.outbox")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (subject, ty, payload) in rows {
        let ev = CloudEvent::from_json(payload.to_string().as_bytes()).unwrap();
        assert_eq!(subject, format!("isp.billing.{ty}"));
        assert_eq!(ev.id.get_version_num(), 7, "{ty}");
        let ok = match ty.as_str() {
            "invoice.created" => ev.payload::<InvoiceCreated>().unwrap().is_some(),
            "invoice.overdue" => ev.payload::<InvoiceOverdue>().unwrap().is_some(),
            "subscriber.suspended" => ev.payload::<SubscriberSuspended>().unwrap().is_some(),
            "subscriber.updated" => ev.payload::<SubscriberUpdated>().unwrap().is_some(),
            "subscriber.created" => ev.payload::<SubscriberCreated>().unwrap().is_some(),
            other => panic!("unexpected event {other}"),
        };
        assert!(ok, "{ty}");
    }
}

#[tokio::test]
async fn paying_what_is_overdue_reactivates_a_suspended_subscriber_from_today() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-01-10").await;
    app.sql("UPDATE billing.invoices SET due_date = '2026-01-01'")
        .await;
    run(&app, &admin, "2026-01-10").await; // first invoice overdue, period from Jan 10 invoiced
    let path = format!("/api/billing/subscribers/{sub}");
    assert_eq!(get(&app, &bm, &path).await["status"], "Suspended");
    // Paying one of two debts is not enough.
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    assert_eq!(get(&app, &bm, &path).await["status"], "Suspended");
    run(&app, &admin, "2026-01-11").await; // the Jan 10 invoice is now overdue too
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-01-10'")).await;
    let r = pay(&app, &bm, &period, json!(1000), "C2", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let doc = get(&app, &bm, &path).await;
    assert_eq!(doc["status"], "Active");
    // The suspended months are not billed: the next period starts today.
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Africa::Nairobi)
        .date_naive();
    assert_eq!(doc["nextDueDate"], today.to_string());
    assert_eq!(
        app.outbox_count("billing", "subscriber.reactivated").await,
        1
    );
    // Billing Manager may also suspend and reactivate by hand.
    let r = app.patch(&path, &bm, json!({"status": "Suspended"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(app.outbox_count("billing", "subscriber.suspended").await, 2);
}

#[tokio::test]
async fn billing_cycles_keep_the_anchor_day_across_month_ends() {
    let app = app().await;
    let cases = [
        ("2026-01-31", "Monthly", 31, "2026-02-28"),
        ("2026-02-28", "Monthly", 31, "2026-03-31"),
        ("2028-01-31", "Monthly", 31, "2028-02-29"),
        ("2026-11-30", "Quarterly", 30, "2027-02-28"),
        ("2026-12-15", "Monthly", 15, "2027-01-15"),
        ("2026-10-31", "Quarterly", 31, "2027-01-31"),
    ];
    for (from, cycle, anchor, want) in cases {
        let got: NaiveDate = app
            .scalar(&format!(
                "SELECT billing.add_cycle('{from}', '{cycle}', {anchor})"
            ))
            .await;
        assert_eq!(got, d(want), "{from} {cycle} {anchor}");
    }
}

#[tokio::test]
async fn openapi_documents_the_custom_operations() {
    let app = app().await;
    let r = app
        .request(
            reqwest::Method::GET,
            "/api/billing/openapi.json",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for path in [
        "/api/billing/subscribers",
        "/api/billing/invoices",
        "/api/billing/payments",
        "/api/billing/expenses/{id}/receipt",
        "/api/billing/jobs/daily-run",
        "/api/billing/dailyRuns",
    ] {
        assert!(r.body["paths"].get(path).is_some(), "{path}");
    }
    assert!(r.body["paths"]["/api/billing/subscribers"]
        .get("post")
        .is_some());
}

// ---- expenses -----------------------------------------------------------------------

fn multipart(filename: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "XBOUNDARYX";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn expenses_keep_receipts_that_only_finance_can_upload_and_download() {
    let app = app_with(|c| {
        Box::pin(svc_billing::start_with(
            c,
            svc_billing::Options {
                receipt_max_bytes: 200_000,
                ..options()
            },
        ))
    })
    .await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let r = app
        .post(
            "/api/billing/expenses",
            &bm,
            json!({"expenseDate": "2026-11-01", "category": "Bandwidth",
        "vendor": "Safaricom", "amount": "45000.00", "description": "November transit"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    for (patch, field) in [
        (json!({"amount": 0}), "amount"),
        (json!({"category": "Snacks"}), "category"),
        (json!({"expenseDate": null}), "expenseDate"),
        (json!({"receipt": {}}), "receipt"),
    ] {
        let mut body = json!({"expenseDate": "2026-11-01", "category": "Rent", "amount": 100});
        body.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        let r = app.post("/api/billing/expenses", &bm, body).await;
        assert!(
            matches!(r.status, StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN),
            "{patch}"
        );
        assert_eq!(r.error_path(), Some(field), "{patch}");
    }
    // No receipt yet: the expense is there (not a 404), with nothing to download.
    let r = app
        .get(&format!("/api/billing/expenses/{id}/receipt"), &bm)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("no receipt"));
    let r = app
        .get(
            &format!("/api/billing/expenses/{}/receipt", Uuid::new_v4()),
            &bm,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    let url = format!("{}/api/billing/expenses/{id}/receipt", app.base);
    let upload = |token: String, name: &str, data: Vec<u8>| {
        let (ct, body) = multipart(name, &data);
        let req = app
            .http
            .post(&url)
            .header("authorization", format!("JWT {token}"))
            .header("content-type", ct)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png.extend_from_slice(&[7u8; 100]);
    let (s, b) = upload(bm.clone(), "../../receipt.png", png.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b:?}");
    assert_eq!(b["doc"]["receipt"]["contentType"], "image/png");
    assert_eq!(b["doc"]["receipt"]["filename"], "receipt.png");
    let res = app
        .http
        .get(&url)
        .header("authorization", format!("JWT {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.bytes().await.unwrap().to_vec(), png);
    // Not a receipt type, empty, too large, missing: refused.
    let (s, b) = upload(bm.clone(), "notes.txt", b"hello".to_vec()).await;
    assert_eq!(
        (s, b["errors"][0]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("file"))
    );
    let (s, _) = upload(bm.clone(), "empty.pdf", vec![]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let mut big = b"%PDF-1.7\n".to_vec();
    big.resize(300_000, b'x');
    let (s, b) = upload(bm.clone(), "big.pdf", big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        b["errors"][0]["message"],
        "The receipt is too large: at most 200000 bytes is accepted."
    );
    let (s, _) = upload(bm.clone(), "x.pdf", b"%PDF-1.4 ok".to_vec()).await;
    assert_eq!(s, StatusCode::OK);
    let res = app
        .http
        .get(&url)
        .header("authorization", format!("JWT {bm}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/pdf");
    // Others may neither upload nor download.
    for role in [
        "Support Agent",
        "Sales Agent",
        "Network Engineer",
        "Technician",
    ] {
        let (t, _) = app.staff_token(role).await;
        let (s, _) = upload(t.clone(), "x.pdf", b"%PDF-1.4".to_vec()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{role}");
        let res = app
            .http
            .get(&url)
            .header("authorization", format!("JWT {t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{role}");
        assert_eq!(
            app.get("/api/billing/expenses", &t).await.status,
            StatusCode::FORBIDDEN
        );
    }
    let (s, _) = upload(bm.clone(), "x.pdf", b"%PDF-1.4".to_vec()).await;
    assert_eq!(s, StatusCode::OK);
    let missing = format!(
        "{}/api/billing/expenses/{}/receipt",
        app.base,
        Uuid::new_v4()
    );
    let res = app
        .http
        .get(&missing)
        .header("authorization", format!("JWT {bm}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&format!("/api/billing/expenses/{id}"), &bm)
            .await
            .status,
        StatusCode::OK
    );
}

// ---- M-Pesa ----------------------------------------------------------------------------

#[tokio::test]
async fn mpesa_confirmed_payment_is_recorded_once_per_receipt_against_the_account_number() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let acct = r.body["doc"]["accountNumber"].as_str().unwrap().to_string();
    let inv = r.body["invoice"]["id"].as_str().unwrap().to_string();
    let ev = isp_events::payloads::MpesaPaymentConfirmed {
        receipt: "NLJ7RT61SV".into(),
        amount: rust_decimal::Decimal::from(1000),
        phone: "254712345678".into(),
        account_reference: acct,
        invoice: None,
        transaction_time: chrono::Utc::now(),
        source: "c2b".into(),
        bill_ref_number: None,
        payer_sha256: None,
    };
    // Published twice as two distinct events (a retried callback).
    app.publish("mpesa", &ev).await;
    app.publish("mpesa", &ev).await;
    let status = eventually(15, || async {
        let doc = get(&app, &admin, &format!("/api/billing/invoices/{inv}")).await;
        (doc["status"] == "Paid").then_some(doc)
    })
    .await;
    assert!(status.is_some());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.payments WHERE payment_method = 'Mpesa'")
            .await,
        1
    );
    // A receipt for an unknown account (a mistyped BillRefNumber) is not retried
    // forever and not lost: it waits as an unallocated payment, twice announced
    // or not, for finance to allocate.
    let mut unknown = ev.clone();
    unknown.receipt = "QK12ZZ34AB".into();
    unknown.account_reference = "999".into();
    unknown.amount = rust_decimal::Decimal::new(150_000, 2);
    app.publish("mpesa", &unknown).await;
    app.publish("mpesa", &unknown).await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let kept = eventually(15, || async {
        let r = app
            .get(
                "/api/billing/unallocatedPayments?where[status][equals]=Open",
                &bm,
            )
            .await;
        (r.body["totalDocs"] == 1).then_some(r.body["docs"][0].clone())
    })
    .await
    .expect("the unknown account's payment was not kept");
    assert_eq!(kept["paymentReference"], "QK12ZZ34AB");
    assert_eq!(kept["amount"], "1500.00");
    assert_eq!(kept["accountReference"], "999");
    assert!(kept["reason"].as_str().unwrap().contains("account number"));
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.payments")
            .await,
        1
    );
    // Support never sees money; nobody writes the list directly.
    let (support, _) = app.staff_token("Support Agent").await;
    let r = app.get("/api/billing/unallocatedPayments", &support).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .post(
            "/api/billing/unallocatedPayments",
            &admin,
            json!({"paymentReference": "X"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{:?}", r.body);
    let allocate = format!(
        "/api/billing/unallocatedPayments/{}/allocate",
        kept["id"].as_str().unwrap()
    );
    let r = app.post(&allocate, &support, json!({"invoice": inv})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .post(
            &allocate,
            &bm,
            json!({"invoice": Uuid::new_v4().to_string()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("invoice"));
    // The Billing Manager finds the customer and allocates it: a real M-Pesa
    // payment on the invoice (already Paid, so the money is credit).
    let r = app.post(&allocate, &bm, json!({"invoice": inv})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["status"], "Allocated");
    assert_eq!(r.body["payment"]["paymentReference"], "QK12ZZ34AB");
    assert_eq!(r.body["payment"]["paymentMethod"], "Mpesa");
    assert_eq!(r.body["payment"]["amountPaid"], "1500.00");
    let sub = get(&app, &admin, &format!("/api/billing/invoices/{inv}")).await["subscriber"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&app, &admin, &format!("/api/billing/subscribers/{sub}")).await["accountBalance"],
        "1500.00"
    );
    // Once only.
    let r = app.post(&allocate, &bm, json!({"invoice": inv})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.payments")
            .await,
        2
    );
}

#[tokio::test]
async fn scheduler_catches_up_at_start_when_todays_run_time_has_passed() {
    let app = app().await;
    let schedule = svc_billing::daily::Schedule {
        at: chrono::NaiveTime::from_hms_opt(0, 0, 0).unwrap(),
        enabled: true,
    };
    svc_billing::daily::spawn_scheduler(app.ctx("billing"), schedule, Default::default());
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Africa::Nairobi)
        .date_naive();
    let pool = app.admin_pool().await;
    let ran = eventually(10, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM billing.daily_runs WHERE trigger = 'Scheduler' AND run_date = $1",
        )
        .bind(today)
        .fetch_one(&pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert!(ran.is_some(), "no catch-up run for {today}");
    // A second scheduler (another replica) finds today's run logged and waits for tomorrow.
    svc_billing::daily::spawn_scheduler(app.ctx("billing"), schedule, Default::default());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM billing.daily_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

// ---- period prices follow the plan's billing cycle -------------------------------------

/// (amountDue, periodEnd, dueDate, status) of a subscriber's invoice for the period
/// starting `start`.
async fn period_invoice(
    app: &TestApp,
    sub: &str,
    start: &str,
) -> (String, NaiveDate, NaiveDate, String) {
    let pool = app.admin_pool().await;
    sqlx::query_as(&format!(
        "SELECT amount_due::text, period_end, due_date, status FROM billing.invoices
         WHERE subscriber_id = '{sub}' AND period_start = '{start}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap_or_else(|e| panic!("no invoice for {sub} from {start}: {e}"))
}

#[tokio::test]
async fn a_period_costs_the_plan_price_scaled_from_the_plan_cycle_to_the_subscriber_cycle() {
    let app = app().await;
    let admin = app.admin_token().await;
    let monthly = plan(
        &app,
        &admin,
        json!({"price": 2500, "billingCycle": "Monthly"}),
    )
    .await;
    let quarterly = plan(
        &app,
        &admin,
        json!({"price": 7000, "billingCycle": "Quarterly"}),
    )
    .await;
    // First invoices: a Monthly plan bought quarterly costs 3 x 2500; a Quarterly
    // plan bought monthly costs 7000 / 3, rounded half-up to cents.
    let mut body = subscriber_body(&monthly);
    body["billingCycle"] = json!("Quarterly");
    let r = create_sub(&app, &admin, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["invoice"]["amountDue"], "7500.00");
    assert_eq!(r.body["invoice"]["lineItems"][0]["price"], "7500.00");
    let r = create_sub(&app, &admin, subscriber_body(&quarterly)).await;
    assert_eq!(r.body["invoice"]["amountDue"], "2333.33");
    let mut body = subscriber_body(&quarterly);
    body["billingCycle"] = json!("Quarterly");
    assert_eq!(
        create_sub(&app, &admin, body).await.body["invoice"]["amountDue"],
        "7000.00"
    );

    // The daily run prices each period the same way.
    let (m_m, _) = active_sub(&app, &admin, &monthly, "2026-06-01").await;
    let (m_q, _) = active_sub(&app, &admin, &monthly, "2026-06-01").await;
    let (q_m, _) = active_sub(&app, &admin, &quarterly, "2026-06-01").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET billing_cycle = 'Quarterly' WHERE id = '{m_q}'"
    ))
    .await;
    run(&app, &admin, "2026-06-01").await;
    let (amount, end, ..) = period_invoice(&app, &m_m, "2026-06-01").await;
    assert_eq!((amount.as_str(), end), ("2500.00", d("2026-07-01")));
    let (amount, end, ..) = period_invoice(&app, &m_q, "2026-06-01").await;
    assert_eq!((amount.as_str(), end), ("7500.00", d("2026-09-01")));
    let (amount, end, ..) = period_invoice(&app, &q_m, "2026-06-01").await;
    assert_eq!((amount.as_str(), end), ("2333.33", d("2026-07-01")));

    // Changing the subscriber's cycle applies from the next period: the invoiced
    // one keeps its price and length.
    let (bm, _) = app.staff_token("Billing Manager").await;
    for (sub, cycle) in [(&m_m, "Quarterly"), (&q_m, "Quarterly"), (&m_q, "Monthly")] {
        let r = app
            .patch(
                &format!("/api/billing/subscribers/{sub}"),
                &bm,
                json!({ "billingCycle": cycle }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    assert_eq!(period_invoice(&app, &m_m, "2026-06-01").await.0, "2500.00");
    assert_eq!(period_invoice(&app, &m_q, "2026-06-01").await.0, "7500.00");
    for (sub, amount) in [(&m_m, "2500"), (&q_m, "2333.33"), (&m_q, "7500")] {
        let inv: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-06-01'")).await;
        let r = pay(&app, &bm, &inv, json!(amount), &format!("C-{sub}"), "Cash").await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    run(&app, &admin, "2026-09-01").await;
    let (amount, end, ..) = period_invoice(&app, &m_m, "2026-07-01").await;
    assert_eq!(
        (amount.as_str(), end),
        ("7500.00", d("2026-10-01")),
        "Monthly plan, now billed quarterly"
    );
    let (amount, end, ..) = period_invoice(&app, &q_m, "2026-07-01").await;
    assert_eq!(
        (amount.as_str(), end),
        ("7000.00", d("2026-10-01")),
        "Quarterly plan, now billed quarterly"
    );
    let (amount, end, ..) = period_invoice(&app, &m_q, "2026-09-01").await;
    assert_eq!(
        (amount.as_str(), end),
        ("2500.00", d("2026-10-01")),
        "Monthly plan, billed monthly after the quarter already invoiced"
    );
}

// ---- due dates, catch-up and trials ---------------------------------------------------

fn today() -> NaiveDate {
    chrono::Utc::now()
        .with_timezone(&chrono_tz::Africa::Nairobi)
        .date_naive()
}

async fn status_of(app: &TestApp, id: &str) -> String {
    app.scalar(&format!(
        "SELECT status FROM billing.subscribers WHERE id = '{id}'"
    ))
    .await
}

#[tokio::test]
async fn a_caught_up_period_is_due_on_the_run_date_so_the_same_run_does_not_suspend() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    // Paid up, then the runs of 20 to 24 October were missed.
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-10-20").await;
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    let report = run(&app, &admin, "2026-10-25").await;
    assert_eq!(
        (
            report["invoicesCreated"].as_i64(),
            report["invoicesOverdue"].as_i64(),
            report["subscribersSuspended"].as_i64()
        ),
        (Some(1), Some(0), Some(0))
    );
    let (_, end, due, status) = period_invoice(&app, &sub, "2026-10-20").await;
    assert_eq!(
        (end, due, status.as_str()),
        (d("2026-11-20"), d("2026-10-25"), "Unpaid")
    );
    assert_eq!(status_of(&app, &sub).await, "Active");
    // Unpaid the day after its due date: Overdue, and the subscriber is suspended.
    let report = run(&app, &admin, "2026-10-26").await;
    assert_eq!(report["subscribersSuspended"], 1);
    assert_eq!(status_of(&app, &sub).await, "Suspended");
}

#[tokio::test]
async fn payment_terms_push_due_dates_of_invoices_billing_creates() {
    let app = app_with(|c| {
        let mut o = options();
        o.settings.payment_terms_days = 3;
        Box::pin(svc_billing::start_with(c, o))
    })
    .await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-10-20").await;
    // The first invoice: three days after its creation day.
    let inv = get(&app, &bm, &format!("/api/billing/invoices/{first}")).await;
    assert_eq!(inv["dueDate"], (today() + chrono::Days::new(3)).to_string());
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    // A caught-up period: three days after the run date; on time: after its start.
    run(&app, &admin, "2026-10-22").await;
    assert_eq!(
        period_invoice(&app, &sub, "2026-10-20").await.2,
        d("2026-10-25")
    );
    assert_eq!(run(&app, &admin, "2026-10-25").await["invoicesOverdue"], 0);
    assert_eq!(run(&app, &admin, "2026-10-26").await["invoicesOverdue"], 1);
    assert_eq!(status_of(&app, &sub).await, "Suspended");
}

#[tokio::test]
async fn trials_delay_the_first_due_date_protect_from_suspension_and_start_the_next_period_after_them(
) {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    // A trial ending in ten days: the first invoice is due the day after it.
    let trial_end = today() + chrono::Days::new(10);
    let mut body = subscriber_body(&plan);
    body["trialEndDate"] = json!(trial_end.to_string());
    let r = create_sub(&app, &admin, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.body["invoice"]["dueDate"],
        (trial_end + chrono::Days::new(1)).to_string()
    );
    // A trial that already ended changes nothing: due on the creation day.
    let mut body = subscriber_body(&plan);
    body["trialEndDate"] = json!("2026-01-31");
    let r = create_sub(&app, &admin, body).await;
    assert_eq!(r.body["invoice"]["dueDate"], today().to_string());

    // An Active subscriber with an overdue invoice is not suspended while the
    // trial lasts, and is once it has ended.
    let (sub, _) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET trial_end_date = '2026-10-10' WHERE id = '{sub}'"
    ))
    .await;
    app.sql(&format!(
        "UPDATE billing.invoices SET due_date = '2026-10-01' WHERE subscriber_id = '{sub}'"
    ))
    .await;
    let report = run(&app, &admin, "2026-10-05").await;
    assert_eq!(
        (
            report["invoicesCreated"].as_i64(),
            report["invoicesOverdue"].as_i64(),
            report["subscribersSuspended"].as_i64()
        ),
        (Some(0), Some(1), Some(0))
    );
    assert_eq!(
        run(&app, &admin, "2026-10-10").await["subscribersSuspended"],
        0
    );
    assert_eq!(status_of(&app, &sub).await, "Active");
    // The recurring period starts the day after the trial, not at nextDueDate
    // (which fell inside it); the anchor day moves with it.
    let report = run(&app, &admin, "2026-10-11").await;
    assert_eq!(report["invoicesCreated"], 1);
    assert_eq!(report["subscribersSuspended"], 1);
    assert_eq!(
        app.scalar::<i64>(&format!("SELECT count(*) FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start <= '2026-10-10'")).await,
        0
    );
    let (_, end, due, _) = period_invoice(&app, &sub, "2026-10-11").await;
    assert_eq!((end, due), (d("2026-11-11"), d("2026-10-11")));
    let doc = get(&app, &admin, &format!("/api/billing/subscribers/{sub}")).await;
    assert_eq!(
        (
            doc["nextDueDate"].as_str(),
            doc["billingAnchorDay"].as_i64()
        ),
        (Some("2026-10-11"), Some(11))
    );
}

// ---- credit, surplus and suspension reasons ---------------------------------------------

async fn invoice_state(app: &TestApp, id: &str) -> (String, String) {
    let pool = app.admin_pool().await;
    sqlx::query_as(&format!(
        "SELECT status, amount_paid::text FROM billing.invoices WHERE id = '{id}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_overpayment_settles_other_open_invoices_oldest_first_and_the_rest_is_credit() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-09-01").await;
    app.sql(&format!(
        "UPDATE billing.invoices SET due_date = '2026-08-01' WHERE id = '{first}'"
    ))
    .await;
    // The first invoice is overdue on 1 September; the September period is invoiced.
    let report = run(&app, &admin, "2026-09-01").await;
    assert_eq!(report["subscribersSuspended"], 1);
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-09-01'")).await;
    // A manual charge, due mid-September.
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-09-15",
                   "lineItems": [{"description": "Relocation", "quantity": 1, "price": 300}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let manual = r.body["doc"]["id"].as_str().unwrap().to_string();
    let path = format!("/api/billing/subscribers/{sub}");
    assert_eq!(get(&app, &bm, &path).await["accountBalance"], "-2300.00");
    // 2,100 paid against the September invoice: it takes 1,000, the surplus pays
    // the oldest open invoice (the first one, 1,000) and 100 of the manual one.
    let r = pay(&app, &bm, &period, json!(2100), "C1", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["invoice"], period.as_str());
    assert_eq!(r.body["doc"]["amountPaid"], "2100.00");
    assert_eq!(
        invoice_state(&app, &period).await,
        ("Paid".into(), "1000.00".into())
    );
    assert_eq!(
        invoice_state(&app, &first).await,
        ("Paid".into(), "1000.00".into())
    );
    assert_eq!(
        invoice_state(&app, &manual).await,
        ("Unpaid".into(), "100.00".into())
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.outbox WHERE type = 'invoice.updated'")
            .await,
        2
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(doc["accountBalance"], "-200.00");
    // Still owes, and the manual invoice is past due: still suspended.
    assert_eq!(doc["status"], "Suspended");
    // 500 more on the manual invoice: it takes 200, 300 is credit; reactivated.
    let r = pay(&app, &bm, &manual, json!(500), "C2", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        invoice_state(&app, &manual).await,
        ("Paid".into(), "300.00".into())
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(
        (
            doc["accountBalance"].as_str(),
            doc["status"].as_str(),
            doc["suspensionReason"].as_str()
        ),
        (Some("300.00"), Some("Active"), None)
    );
    // The credit settles the next period's invoice in part.
    app.sql(&format!("UPDATE billing.subscribers SET next_due_date = '2026-10-01', billing_anchor_day = 1 WHERE id = '{sub}'")).await;
    run(&app, &admin, "2026-10-01").await;
    let next: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-10-01'")).await;
    assert_eq!(
        invoice_state(&app, &next).await,
        ("Unpaid".into(), "300.00".into())
    );
}

#[tokio::test]
async fn credit_prevents_suspension_and_a_non_negative_balance_reactivates() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2027-06-01").await;
    let path = format!("/api/billing/subscribers/{sub}");
    // An overdue invoice while the balance is in credit (older data, or credit
    // given by hand): no suspension, the subscriber owes nothing overall.
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET account_balance = 500 WHERE id = '{sub}'"
    ))
    .await;
    app.sql(&format!("INSERT INTO billing.invoices (id, invoice_number, subscriber_id, amount_due, due_date, status, line_items)
         VALUES (gen_random_uuid(), 'INV-X1', '{sub}', 400, '2026-10-01', 'Unpaid', '[]')")).await;
    let report = run(&app, &admin, "2026-10-05").await;
    assert_eq!(
        (
            report["invoicesOverdue"].as_i64(),
            report["subscribersSuspended"].as_i64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(get(&app, &bm, &path).await["status"], "Active");
    // Once the balance is negative the same overdue invoice suspends.
    app.sql(&format!(
        "UPDATE billing.subscribers SET account_balance = -400 WHERE id = '{sub}'"
    ))
    .await;
    assert_eq!(
        run(&app, &admin, "2026-10-06").await["subscribersSuspended"],
        1
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(
        (doc["status"].as_str(), doc["suspensionReason"].as_str()),
        (Some("Suspended"), Some("Non-payment"))
    );
    // A payment that brings the balance to zero reactivates even though an
    // overdue invoice still owes (its charge was covered by credit set by hand,
    // which no invoice records).
    app.sql(&format!(
        "UPDATE billing.subscribers SET account_balance = -50 WHERE id = '{sub}'"
    ))
    .await;
    let r = pay(&app, &bm, &first, json!(50), "C2", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let overdue: i64 = app.scalar(&format!("SELECT count(*) FROM billing.invoices WHERE subscriber_id = '{sub}' AND status = 'Overdue'")).await;
    assert_eq!(
        overdue, 1,
        "50 went to the overdue invoice, which still owes 350"
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(
        (doc["accountBalance"].as_str(), doc["status"].as_str()),
        (Some("0.00"), Some("Active"))
    );
}

#[tokio::test]
async fn payments_lift_only_suspensions_for_non_payment_never_manual_ones() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (manual, manual_inv) = active_sub(&app, &admin, &plan, "2027-06-01").await;
    let (unpaid, unpaid_inv) = active_sub(&app, &admin, &plan, "2027-06-01").await;
    app.sql("UPDATE billing.invoices SET due_date = '2026-10-01'")
        .await;
    // Billing Manager suspends one by hand (say, abuse); the run suspends the other.
    let mpath = format!("/api/billing/subscribers/{manual}");
    let r = app.patch(&mpath, &bm, json!({"status": "Suspended"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["suspensionReason"], "Manual");
    assert_eq!(
        run(&app, &admin, "2026-10-02").await["subscribersSuspended"],
        1
    );
    let upath = format!("/api/billing/subscribers/{unpaid}");
    assert_eq!(
        get(&app, &bm, &upath).await["suspensionReason"],
        "Non-payment"
    );
    // Both pay everything: only the non-payment suspension is lifted.
    pay(&app, &bm, &manual_inv, json!(1000), "C1", "Cash").await;
    pay(&app, &bm, &unpaid_inv, json!(1000), "C2", "Cash").await;
    let doc = get(&app, &bm, &mpath).await;
    assert_eq!(
        (doc["status"].as_str(), doc["suspensionReason"].as_str()),
        (Some("Suspended"), Some("Manual"))
    );
    let doc = get(&app, &bm, &upath).await;
    assert_eq!(
        (doc["status"].as_str(), doc["suspensionReason"].as_str()),
        (Some("Active"), None)
    );
    // Staff lift the manual one; the reason is read-only and finance-only.
    let r = app
        .patch(&mpath, &bm, json!({"suspensionReason": null}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::FORBIDDEN, Some("suspensionReason"))
    );
    let r = app.patch(&mpath, &admin, json!({"status": "Active"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["doc"]["suspensionReason"].is_null());
    let (support, _) = app.staff_token("Support Agent").await;
    assert!(get(&app, &support, &mpath)
        .await
        .get("suspensionReason")
        .is_none());
    // Confirming a run's suspension by hand makes it manual.
    app.sql(&format!("UPDATE billing.subscribers SET status = 'Suspended', suspension_reason = 'Non-payment' WHERE id = '{unpaid}'")).await;
    let r = app.patch(&upath, &bm, json!({"status": "Suspended"})).await;
    assert_eq!(r.body["doc"]["suspensionReason"], "Manual");
}

#[tokio::test]
async fn suspended_days_inside_an_invoiced_period_are_owed_and_the_period_keeps_its_end() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let start = today() - chrono::Days::new(10);
    let (sub, first) = active_sub(&app, &admin, &plan, &start.to_string()).await;
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    run(&app, &admin, &start.to_string()).await;
    let day_after = (start + chrono::Days::new(1)).to_string();
    assert_eq!(
        run(&app, &admin, &day_after).await["subscribersSuspended"],
        1
    );
    // Nine days suspended inside the period, then paid today.
    let (period, end): (String, NaiveDate) = {
        let pool = app.admin_pool().await;
        sqlx::query_as(&format!("SELECT id::text, period_end FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '{start}'"))
            .fetch_one(&pool).await.unwrap()
    };
    assert!(end > today());
    assert_eq!(
        pay(&app, &bm, &period, json!(1000), "C2", "Cash")
            .await
            .status,
        StatusCode::CREATED
    );
    let doc = get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await;
    assert_eq!(doc["status"], "Active");
    // The period is owed in full and ends where it always did: no days added.
    assert_eq!(doc["nextDueDate"], end.to_string());
    assert_eq!(doc["accountBalance"], "0.00");
}

#[tokio::test]
async fn receipts_up_to_the_default_5_mib_are_accepted_and_larger_ones_refused_clearly() {
    let app = app().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let r = app
        .post(
            "/api/billing/expenses",
            &bm,
            json!({"expenseDate": "2026-11-01", "category": "Equipment", "amount": 1200}),
        )
        .await;
    let url = format!(
        "{}/api/billing/expenses/{}/receipt",
        app.base,
        r.body["doc"]["id"].as_str().unwrap()
    );
    let upload = |size: usize| {
        let mut pdf = b"%PDF-1.7\n".to_vec();
        pdf.resize(size, b'x');
        let (ct, body) = multipart("scan.pdf", &pdf);
        let req = app
            .http
            .post(&url)
            .header("authorization", format!("JWT {bm}"))
            .header("content-type", ct)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Above axum's 2 MiB default, within the 5 MiB default limit.
    let (s, b) = upload(3 * 1024 * 1024).await;
    assert_eq!(s, StatusCode::OK, "{b:?}");
    assert_eq!(b["doc"]["receipt"]["size"], 3 * 1024 * 1024);
    let (s, _) = upload(5 * 1024 * 1024).await;
    assert_eq!(s, StatusCode::OK);
    // One byte over, and far over: 413 saying what the limit is.
    for size in [5 * 1024 * 1024 + 1, 8 * 1024 * 1024] {
        let (s, b) = upload(size).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{size}: {b:?}");
        assert_eq!(
            b["errors"][0]["message"], "The receipt is too large: at most 5 MiB is accepted.",
            "{size}"
        );
    }
}

#[tokio::test]
async fn network_fields_are_hidden_from_sales_agents_and_billing_managers() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({})).await;
    let (sub, _) = active_sub(&app, &admin, &plan, "2027-01-01").await;
    app.sql(&format!("UPDATE billing.subscribers SET connection_type = 'PPPoE', assigned_ip = '100.64.0.9' WHERE id = '{sub}'")).await;
    let path = format!("/api/billing/subscribers/{sub}");
    for role in ["Sales Agent", "Billing Manager"] {
        let (t, _) = app.staff_token(role).await;
        let doc = get(&app, &t, &path).await;
        assert_eq!(doc["firstName"], "Amina", "{role}");
        for hidden in ["connectionType", "assignedIp"] {
            assert!(doc.get(hidden).is_none(), "{role} sees {hidden}");
        }
        let list = get(&app, &t, "/api/billing/subscribers").await;
        assert!(list["docs"][0].get("assignedIp").is_none(), "{role}");
        // Nor can they filter or sort on it.
        let r = app
            .get(
                "/api/billing/subscribers?where[assignedIp][equals]=100.64.0.9",
                &t,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{role}");
        let r = app
            .get("/api/billing/subscribers?sort=connectionType", &t)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{role}");
    }
    let (ne, _) = app.staff_token("Network Engineer").await;
    let (support, _) = app.staff_token("Support Agent").await;
    for t in [&admin, &ne, &support] {
        let doc = get(&app, t, &path).await;
        assert_eq!(
            (doc["connectionType"].as_str(), doc["assignedIp"].as_str()),
            (Some("PPPoE"), Some("100.64.0.9"))
        );
    }
}

// ---- amounts too large for the ledger are bad input, not server errors ------------------

#[tokio::test]
async fn amounts_that_would_overflow_the_ledger_are_400_naming_the_field() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let sub = r.body["doc"]["id"].as_str().unwrap().to_string();
    let inv = r.body["invoice"]["id"].as_str().unwrap().to_string();
    // More than numeric(14,2) holds.
    let r = pay(&app, &bm, &inv, json!("1000000000000"), "BIG-0", "Cash").await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("amountPaid")),
        "{:?}",
        r.body
    );
    // Each fits, but the credit they add up to would not.
    let r = pay(&app, &bm, &inv, json!("999999999999.99"), "BIG-1", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        invoice_state(&app, &inv).await,
        ("Paid".into(), "1000.00".into())
    );
    let r = pay(&app, &bm, &inv, json!("999999999999.99"), "BIG-2", "Cash").await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("amountPaid")),
        "{:?}",
        r.body
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.payments")
            .await,
        1
    );
    // Line items: 100 lines of 10,000 x 10,000,000 add up to more than fits.
    let huge: Vec<Value> = (0..100)
        .map(|_| json!({"description": "Fibre", "quantity": 10000, "price": 10000000}))
        .collect();
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": huge}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("lineItems")),
        "{:?}",
        r.body
    );
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "status": "Draft",
                   "lineItems": [{"description": "Cable", "quantity": 1, "price": 100}]}),
        )
        .await;
    let small = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .patch(
            &format!("/api/billing/invoices/{small}"),
            &bm,
            json!({ "lineItems": huge }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("lineItems")),
        "{:?}",
        r.body
    );
    // Each invoice fits, but the balance they add up to would not.
    let big: Vec<Value> = (0..100)
        .map(|_| json!({"description": "Fibre", "quantity": 900, "price": 10000000}))
        .collect();
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": big}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": big}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": big}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("lineItems")),
        "{:?}",
        r.body
    );
    // A first invoice whose one-off charges overflow it.
    let mut body = subscriber_body(&plan);
    body["oneOffCharges"] = json!(huge);
    let r = create_sub(&app, &admin, body).await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("oneOffCharges")),
        "{:?}",
        r.body
    );
}

// ---- edits that move dates or money wait for the run and respect invoiced time ----------

/// Holds the daily run's lock (as a running run does) on its own connection.
async fn hold_run_lock(app: &TestApp) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let pool = app.admin_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('billing.daily_run', 0))")
        .execute(&mut *conn)
        .await
        .unwrap();
    conn
}

/// Whether another transaction holds a lock on the row.
async fn row_locked(app: &TestApp, table: &str, id: &str) -> bool {
    let pool = app.admin_pool().await;
    let mut tx = pool.begin().await.unwrap();
    let r = sqlx::query(&format!(
        "SELECT 1 FROM billing.{table} WHERE id = '{id}' FOR UPDATE NOWAIT"
    ))
    .execute(&mut *tx)
    .await;
    tx.rollback().await.unwrap();
    r.is_err()
}

#[tokio::test]
async fn date_edits_wait_for_a_running_daily_run_and_never_reach_back_into_invoiced_time() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, _) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    run(&app, &admin, "2026-10-01").await;
    let path = format!("/api/billing/subscribers/{sub}");
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-10-01'")).await;

    // While a run holds its lock, edits of nextDueDate / trialEndDate (and invoice
    // edits) wait, without holding the row the run may need meanwhile.
    for (target, body) in [
        (path.clone(), json!({"trialEndDate": "2026-09-30"})),
        (path.clone(), json!({"nextDueDate": "2026-11-01"})),
        (
            format!("/api/billing/invoices/{period}"),
            json!({"dueDate": "2026-10-02"}),
        ),
    ] {
        let mut lock = hold_run_lock(&app).await;
        let req = app
            .http
            .patch(format!("{}{target}", app.base))
            .header("authorization", format!("JWT {bm}"))
            .json(&body);
        let edit = tokio::spawn(async move { req.send().await.unwrap().status() });
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        assert!(!edit.is_finished(), "{body} did not wait for the run");
        assert!(!row_locked(&app, "subscribers", &sub).await, "{body}");
        assert!(!row_locked(&app, "invoices", &period).await, "{body}");
        sqlx::query("SELECT pg_advisory_unlock(hashtextextended('billing.daily_run', 0))")
            .execute(&mut *lock)
            .await
            .unwrap();
        assert_eq!(edit.await.unwrap(), StatusCode::OK, "{body}");
    }
    assert_eq!(get(&app, &bm, &path).await["nextDueDate"], "2026-11-01");

    // October is invoiced: nextDueDate cannot go back into it (it would be
    // invoiced twice), whoever asks.
    for day in ["2026-10-15", "2026-10-01", "2026-09-01"] {
        let r = app.patch(&path, &bm, json!({ "nextDueDate": day })).await;
        assert_eq!(
            (r.status, r.error_path()),
            (StatusCode::BAD_REQUEST, Some("nextDueDate")),
            "{day}: {:?}",
            r.body
        );
    }
    let r = app
        .patch(&path, &admin, json!({"nextDueDate": "2026-11-05"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["billingAnchorDay"], 5);

    // Cancelling October withdraws it: billing goes on after it, and a period may
    // start inside it again, but not on the day the cancelled one started.
    let r = app
        .patch(
            &format!("/api/billing/invoices/{period}"),
            &bm,
            json!({"status": "Cancelled"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(get(&app, &bm, &path).await["nextDueDate"], "2026-11-05");
    let r = app
        .patch(&path, &bm, json!({"nextDueDate": "2026-10-01"}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("nextDueDate"))
    );
    let r = app
        .patch(&path, &bm, json!({"nextDueDate": "2026-10-20"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(run(&app, &admin, "2026-10-20").await["invoicesCreated"], 1);
}

#[tokio::test]
async fn an_invoice_covered_by_an_edit_or_by_credit_is_paid_and_a_withdrawn_one_returns_its_settlement_as_credit(
) {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    let path = format!("/api/billing/subscribers/{sub}");
    run(&app, &admin, "2026-10-01").await;
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-10-01'")).await;
    // 600 paid on October's 1,000; a discount brings it down to 600: Paid, and the
    // next period is November.
    pay(&app, &bm, &period, json!(600), "C1", "Cash").await;
    let r = app
        .patch(
            &format!("/api/billing/invoices/{period}"),
            &bm,
            json!({"lineItems": [{"description": "October, discounted", "quantity": 1, "price": 600}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        (
            r.body["doc"]["status"].as_str(),
            r.body["doc"]["amountPaid"].as_str()
        ),
        (Some("Paid"), Some("600.00"))
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(doc["nextDueDate"], "2026-11-01");
    assert_eq!(doc["accountBalance"], "-1000.00");
    // A manual charge is settled in part by another payment's surplus; withdrawn,
    // what settled it is credit again. An invoice a payment names stays.
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-11-10",
                   "lineItems": [{"description": "Relocation", "quantity": 1, "price": 300}]}),
        )
        .await;
    let manual = r.body["doc"]["id"].as_str().unwrap().to_string();
    pay(&app, &bm, &first, json!(1100), "C2", "Cash").await;
    assert_eq!(
        invoice_state(&app, &manual).await,
        ("Unpaid".into(), "100.00".into())
    );
    let r = app
        .patch(
            &format!("/api/billing/invoices/{manual}"),
            &bm,
            json!({"status": "Cancelled"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        invoice_state(&app, &manual).await,
        ("Cancelled".into(), "0.00".into())
    );
    assert_eq!(get(&app, &bm, &path).await["accountBalance"], "100.00");
    // With credit, a new charge is settled from it at once.
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-11-10",
                   "lineItems": [{"description": "Cable", "quantity": 1, "price": 80}]}),
        )
        .await;
    assert_eq!(
        (
            r.body["doc"]["status"].as_str(),
            r.body["doc"]["amountPaid"].as_str()
        ),
        (Some("Paid"), Some("80.00"))
    );
    assert_eq!(get(&app, &bm, &path).await["accountBalance"], "20.00");
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-11-10", "status": "Draft",
                   "lineItems": [{"description": "Cable", "quantity": 1, "price": 50}]}),
        )
        .await;
    let draft = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .patch(
            &format!("/api/billing/invoices/{draft}"),
            &bm,
            json!({"status": "Unpaid"}),
        )
        .await;
    assert_eq!(
        (
            r.body["doc"]["status"].as_str(),
            r.body["doc"]["amountPaid"].as_str()
        ),
        (Some("Unpaid"), Some("20.00"))
    );
    let r = pay(&app, &bm, &draft, json!(10), "C3", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = app
        .patch(
            &format!("/api/billing/invoices/{draft}"),
            &bm,
            json!({"status": "Cancelled"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("status"))
    );
}

#[tokio::test]
async fn a_receipt_file_is_deleted_only_once_its_expense_row_is_gone_for_good() {
    let app = app().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let r = app
        .post(
            "/api/billing/expenses",
            &bm,
            json!({"expenseDate": "2026-11-01", "category": "Rent", "amount": 30000}),
        )
        .await;
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let url = format!("{}/api/billing/expenses/{id}/receipt", app.base);
    let (ct, body) = multipart("lease.pdf", b"%PDF-1.4 lease");
    let res = app
        .http
        .post(&url)
        .header("authorization", format!("JWT {bm}"))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let files = app.shared.config.data_dir.join("billing").join("files");
    let count = || {
        walk(&files)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
            .count()
    };
    assert_eq!(count(), 1);
    // The row's deletion fails and rolls back: the file is still there.
    app.sql("CREATE FUNCTION billing.no_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$").await;
    app.sql("CREATE TRIGGER no_delete BEFORE DELETE ON billing.expenses FOR EACH ROW EXECUTE FUNCTION billing.no_delete()").await;
    let path = format!("/api/billing/expenses/{id}");
    assert_ne!(app.delete(&path, &bm).await.status, StatusCode::OK);
    assert_eq!(count(), 1);
    let res = app
        .http
        .get(&url)
        .header("authorization", format!("JWT {bm}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().to_vec(), b"%PDF-1.4 lease");
    // Deleted for good: the file goes too.
    app.sql("DROP TRIGGER no_delete ON billing.expenses").await;
    assert_eq!(app.delete(&path, &bm).await.status, StatusCode::OK);
    assert_eq!(count(), 0);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn the_run_log_counts_due_subscribers_skipped_because_their_plan_is_unknown() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (known, _) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    let (orphan, _) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    // Its plan never reached Billing (say, Core's event is still on its way).
    app.sql(&format!(
        "UPDATE billing.subscribers SET service_plan = gen_random_uuid() WHERE id = '{orphan}'"
    ))
    .await;
    let report = run(&app, &admin, "2026-10-01").await;
    assert_eq!(
        (
            report["invoicesCreated"].as_i64(),
            report["skippedUnknownPlan"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let _ = period_invoice(&app, &known, "2026-10-01").await;
    let log = get(&app, &admin, "/api/billing/dailyRuns").await;
    assert_eq!(log["docs"][0]["skippedUnknownPlan"], 1);
    // Still counted on the next run, until the plan arrives.
    assert_eq!(
        run(&app, &admin, "2026-10-02").await["skippedUnknownPlan"],
        1
    );
}

#[tokio::test]
async fn bad_input_on_invoice_and_expense_edits_is_400_naming_the_field() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let inv = r.body["invoice"]["id"].as_str().unwrap().to_string();
    let inv_path = format!("/api/billing/invoices/{inv}");
    let item = |extra: Value| {
        let mut i = json!({"description": "Cable", "quantity": 1, "price": 100});
        i.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({ "lineItems": [i] })
    };
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"lineItems": []}),
            StatusCode::BAD_REQUEST,
            "lineItems",
        ),
        (
            json!({"lineItems": "x"}),
            StatusCode::BAD_REQUEST,
            "lineItems",
        ),
        (
            json!({"lineItems": null}),
            StatusCode::BAD_REQUEST,
            "lineItems",
        ),
        (
            json!({"lineItems": [5]}),
            StatusCode::BAD_REQUEST,
            "lineItems.0",
        ),
        (
            item(json!({"quantity": 0})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.quantity",
        ),
        (
            item(json!({"quantity": "2"})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.quantity",
        ),
        (
            item(json!({"quantity": 10001})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.quantity",
        ),
        (
            item(json!({"price": -1})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"price": "9.999"})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"price": "lots"})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"price": 10000001})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"price": null})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"description": " "})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.description",
        ),
        (
            item(json!({"colour": "red"})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.colour",
        ),
        (
            json!({"dueDate": "soon"}),
            StatusCode::BAD_REQUEST,
            "dueDate",
        ),
        (json!({"dueDate": null}), StatusCode::BAD_REQUEST, "dueDate"),
        (
            json!({"status": "Bogus"}),
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (json!({"nope": 1}), StatusCode::BAD_REQUEST, "nope"),
        (json!({"amountDue": 1}), StatusCode::FORBIDDEN, "amountDue"),
        (
            json!({"amountPaid": 1}),
            StatusCode::FORBIDDEN,
            "amountPaid",
        ),
        (
            json!({"subscriber": Uuid::new_v4()}),
            StatusCode::FORBIDDEN,
            "subscriber",
        ),
    ];
    for (body, status, path) in cases {
        let r = app.patch(&inv_path, &bm, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        assert!(
            r.error_paths().iter().any(|p| p == path),
            "{body}: {:?}",
            r.body
        );
    }
    let doc = get(&app, &bm, &inv_path).await;
    assert_eq!(
        (doc["amountDue"].as_str(), doc["status"].as_str()),
        (Some("1000.00"), Some("Unpaid"))
    );

    let r = app
        .post(
            "/api/billing/expenses",
            &bm,
            json!({"expenseDate": "2026-11-01", "category": "Rent", "amount": 100}),
        )
        .await;
    let exp_path = format!(
        "/api/billing/expenses/{}",
        r.body["doc"]["id"].as_str().unwrap()
    );
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (json!({"amount": 0}), StatusCode::BAD_REQUEST, "amount"),
        (json!({"amount": -5}), StatusCode::BAD_REQUEST, "amount"),
        (json!({"amount": "abc"}), StatusCode::BAD_REQUEST, "amount"),
        (
            json!({"amount": "1.001"}),
            StatusCode::BAD_REQUEST,
            "amount",
        ),
        (
            json!({"amount": "1000000000000"}),
            StatusCode::BAD_REQUEST,
            "amount",
        ),
        (json!({"amount": null}), StatusCode::BAD_REQUEST, "amount"),
        (
            json!({"category": "Snacks"}),
            StatusCode::BAD_REQUEST,
            "category",
        ),
        (
            json!({"expenseDate": "2026-13-01"}),
            StatusCode::BAD_REQUEST,
            "expenseDate",
        ),
        (
            json!({"expenseDate": null}),
            StatusCode::BAD_REQUEST,
            "expenseDate",
        ),
        (
            json!({"vendor": "v".repeat(501)}),
            StatusCode::BAD_REQUEST,
            "vendor",
        ),
        (json!({"vendor": 7}), StatusCode::BAD_REQUEST, "vendor"),
        (
            json!({"description": "d".repeat(20_001)}),
            StatusCode::BAD_REQUEST,
            "description",
        ),
        (json!({"receipt": {}}), StatusCode::FORBIDDEN, "receipt"),
        (json!({"nope": 1}), StatusCode::BAD_REQUEST, "nope"),
    ];
    for (body, status, path) in cases {
        let r = app.patch(&exp_path, &bm, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        assert!(
            r.error_paths().iter().any(|p| p == path),
            "{body}: {:?}",
            r.body
        );
    }
    let doc = get(&app, &bm, &exp_path).await;
    assert_eq!(
        (doc["amount"].as_str(), doc["category"].as_str()),
        (Some("100.00"), Some("Rent"))
    );
}
