//! M-Pesa confirmations recorded as payments, once per receipt, against the account number.

use isp_testkit::eventually;
use uuid::Uuid;

use super::*;

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
