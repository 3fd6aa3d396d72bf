//! STK push: an invoice paid once, input and roles, the Daraja limit, failed and lost prompts.

use super::*;

fn receipt_of(cb: &Value) -> String {
    cb["body"]["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["Name"] == "MpesaReceiptNumber")
        .unwrap()["Value"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn an_stk_push_pays_the_invoice_once_however_often_the_callback_is_replayed() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let (_, inv, acct, due) = t.subscriber(&admin, 2500, "0712345678").await;

    let r = t
        .post("/api/mpesa/stk-push", &bm, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["status"], "Pending");
    assert_eq!(r.body["doc"]["phone"], "+254712345678");
    assert_eq!(r.body["doc"]["accountReference"], acct.as_str());
    assert_eq!(r.body["doc"]["amount"], due.as_str());
    // A second prompt while the first waits is refused.
    let again = t
        .post("/api/mpesa/stk-push", &bm, json!({"invoice": inv}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);
    assert_eq!(again.error_path(), Some("invoice"));

    let cbs = t.wait_callback("/stk", 1).await;
    let receipt = receipt_of(&cbs[0]);
    assert!(
        t.invoice_status(&bm, &inv, "Paid").await,
        "the invoice becomes Paid"
    );
    // Ten sequential and ten concurrent replays of the same callback.
    for _ in 0..10 {
        assert_eq!(t.replay(&cbs[0]).await, StatusCode::OK);
    }
    let all = futures::future::join_all((0..10).map(|_| t.replay(&cbs[0]))).await;
    assert!(all.iter().all(|s| *s == StatusCode::OK), "{all:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.billing_payments(&receipt).await, 1);
    assert_eq!(t.scalar_i64("SELECT count(*) FROM mpesa.payments").await, 1);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.payment.confirmed'")
            .await,
        1
    );
    // Every callback is in the log; the replays as duplicates.
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback'")
            .await,
        21
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback' AND status = 'Duplicate'").await,
        20
    );
    let list = t.get("/api/mpesa/stkRequests", &bm).await;
    assert_eq!(list.body["docs"][0]["status"], "Paid", "{:?}", list.body);
    assert_eq!(list.body["docs"][0]["receipt"], receipt.as_str());
    assert_eq!(list.body["docs"][0]["settledBy"], "Callback");
    // The log never holds the STK password.
    let raw: Value =
        sqlx::query_scalar("SELECT raw FROM mpesa.transactions WHERE kind = 'STK Push'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(raw["request"]["Password"], "<redacted>");
    // A Paid invoice is refused.
    let r = t
        .post("/api/mpesa/stk-push", &bm, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
}

#[tokio::test]
async fn stk_push_names_every_bad_field_and_checks_roles() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (tech, _) = t.app.staff_token("Technician").await;
    let (_, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;

    let r = t
        .post(
            "/api/mpesa/stk-push",
            &admin,
            json!({"invoice": "nope", "phone": "+14155552671", "amount": 5}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(paths, vec!["amount", "invoice", "phone"]);
    let r = t.post("/api/mpesa/stk-push", &admin, json!({})).await;
    assert_eq!(r.error_path(), Some("invoice"));
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &admin,
            json!({"invoice": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("invoice"));
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &admin,
            json!({"invoice": inv, "phone": "0712 34"}),
        )
        .await;
    assert_eq!(r.error_path(), Some("phone"));
    let r = t
        .req(
            reqwest::Method::POST,
            "/api/mpesa/stk-push",
            None,
            Some(json!({"invoice": inv})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t
        .post("/api/mpesa/stk-push", &tech, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t.get("/api/mpesa/stkRequests", &tech).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Nothing was saved by the refusals.
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.stk_requests")
            .await,
        0
    );
    // Another service may ask with the scope.
    let svc = t.app.service_token("billing", &["mpesa.stkPush.create"]);
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &svc,
            json!({"invoice": inv, "phone": "0722000111"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["trigger"], "Service");
    assert_eq!(r.body["doc"]["phone"], "+254722000111");
}

#[tokio::test]
async fn an_outstanding_amount_above_the_daraja_limit_is_refused() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (_, inv, _, _) = t.subscriber(&admin, 300_000, "0712345678").await;
    let r = t
        .post("/api/mpesa/stk-push", &admin, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("invoice"));
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("250000"));
}

#[tokio::test]
async fn failed_prompts_are_recorded_with_their_reason() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let (_, inv, _, _) = t.subscriber(&admin, 1032, "0712345678").await;
    let r = t
        .post("/api/mpesa/stk-push", &bm, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let failed = eventually(15, || async {
        let r = t.get(&format!("/api/mpesa/stkRequests/{id}"), &bm).await;
        (r.body["status"] == "Failed").then_some(r.body)
    })
    .await
    .expect("the cancelled prompt is Failed");
    assert_eq!(failed["resultCode"], "1032");
    assert_eq!(failed["resultDescription"], "Request cancelled by user");
    // A string ResultCode, as seen in production.
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &bm,
            json!({"invoice": inv, "phone": "254700000500"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let failed = eventually(15, || async {
        let r = t.get(&format!("/api/mpesa/stkRequests/{id}"), &bm).await;
        (r.body["status"] == "Failed").then_some(r.body)
    })
    .await
    .expect("Failed");
    assert_eq!(failed["resultCode"], "SFC_IC0003");
    assert!(t.invoice_status(&bm, &inv, "Unpaid").await);
    assert_eq!(t.scalar_i64("SELECT count(*) FROM mpesa.payments").await, 0);
}

#[tokio::test]
async fn a_lost_stk_callback_is_settled_by_the_query_and_credited_once() {
    // The customer takes 3 s: the first query (after 2 s) hears "being processed".
    let cfg = daraja_standin::Config {
        callback_delay: Duration::from_secs(3),
        ..Default::default()
    };
    let t = App::start_with(cfg, |_| {}).await;
    let admin = t.app.admin_token().await;
    let (_, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &admin,
            json!({"invoice": inv, "phone": "254700000404"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    assert!(
        t.invoice_status(&admin, &inv, "Paid").await,
        "settled without a callback"
    );
    let doc = t
        .get(&format!("/api/mpesa/stkRequests/{id}"), &admin)
        .await
        .body;
    assert_eq!(doc["status"], "Paid");
    assert_eq!(doc["settledBy"], "Query");
    assert!(doc["receipt"].is_string(), "{doc}");
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Query' AND status = 'Processing'").await,
        1,
        "the first query found it still being processed"
    );
    assert!(t.callbacks_to("/stk").is_empty());
    assert_eq!(
        t.billing_payments(doc["receipt"].as_str().unwrap()).await,
        1
    );
    // A late callback for the same money changes nothing.
    let late = json!({"Body": {"stkCallback": {"MerchantRequestID": doc["merchantRequestId"],
        "CheckoutRequestID": doc["checkoutRequestId"], "ResultCode": 0, "ResultDesc": "ok",
        "CallbackMetadata": {"Item": [{"Name": "Amount", "Value": 2500.0},
            {"Name": "MpesaReceiptNumber", "Value": doc["receipt"]}, {"Name": "PhoneNumber", "Value": 254700000404i64}]}}}});
    let url = format!("{}/hooks/daraja/{}/stk", t.base, hook_token(&t).await);
    let s = t
        .app
        .http
        .post(&url)
        .json(&late)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        t.billing_payments(doc["receipt"].as_str().unwrap()).await,
        1
    );
    assert_eq!(t.scalar_i64("SELECT count(*) FROM mpesa.payments").await, 1);
}

#[tokio::test]
async fn with_automatic_prompts_a_new_invoice_is_prompted_once_and_paid() {
    let t = App::start_with(daraja_standin::Config::default(), |o| {
        o.auto_stk = svc_mpesa::AutoStk::parse("created").unwrap()
    })
    .await;
    let admin = t.app.admin_token().await;
    let (_, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    assert!(
        t.invoice_status(&admin, &inv, "Paid").await,
        "the automatic prompt is paid"
    );
    let r = t.get("/api/mpesa/stkRequests", &admin).await;
    assert_eq!(r.body["totalDocs"], 1, "{:?}", r.body);
    assert_eq!(r.body["docs"][0]["trigger"], "Invoice Created");
    assert_eq!(r.body["docs"][0]["requestedBy"], "automatic");
    // The same invoice.created again (a redelivery, a replay): no second prompt.
    let snap: Value = t
        .app
        .get(&format!("/api/billing/invoices/{inv}"), &admin)
        .await
        .body;
    let ev = t
        .app
        .publish(
            "billing",
            &isp_events::payloads::InvoiceCreated(isp_events::payloads::InvoiceSnapshot {
                id: inv.parse().unwrap(),
                invoice_number: snap["invoiceNumber"].as_str().unwrap().into(),
                subscriber: snap["subscriber"].as_str().unwrap().parse().unwrap(),
                amount_due: snap["amountDue"].as_str().unwrap().parse().unwrap(),
                due_date: snap["dueDate"].as_str().unwrap().parse().unwrap(),
                status: isp_events::options::InvoiceStatus::Unpaid,
                updated_at: chrono::Utc::now() - chrono::Duration::minutes(5),
            }),
        )
        .await;
    let applied = eventually(15, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM mpesa.processed_events WHERE consumer = 'mpesa-billing' AND event_id = $1",
        )
        .bind(ev)
        .fetch_one(&t.pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert!(applied.is_some(), "M-Pesa applied the replayed event");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.stk_requests")
            .await,
        1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.auto_prompts WHERE status = 'Sent'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_prompt_whose_answer_was_lost_with_a_restart_does_not_block_the_invoice() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (sub, inv, acct, _) = t.subscriber(&admin, 2500, "0712345678").await;
    // What a crash between saving the prompt and recording Daraja's answer leaves.
    sqlx::query(
        "INSERT INTO mpesa.stk_requests (id, invoice_id, subscriber_id, account_reference, phone, amount, created_at)
         VALUES ($1, $2::uuid, $3::uuid, $4, '+254712345678', 2500, now() - interval '1 hour')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(&inv)
    .bind(&sub)
    .bind(&acct)
    .execute(&t.pool)
    .await
    .unwrap();
    let r = eventually(10, || async {
        let r = t
            .post("/api/mpesa/stk-push", &admin, json!({"invoice": inv}))
            .await;
        (r.status == StatusCode::CREATED).then_some(r)
    })
    .await
    .expect("a new prompt once the lost one is marked Failed");
    assert_eq!(r.body["doc"]["status"], "Pending");
    assert!(t.invoice_status(&admin, &inv, "Paid").await);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.stk_requests WHERE status = 'Failed' AND result_code = 'No answer'").await,
        1
    );
}
