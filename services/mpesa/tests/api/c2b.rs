//! Daraja's callbacks and C2B: the path token, account matching, unallocated and late payments.

use super::*;

#[tokio::test]
async fn callbacks_need_the_path_token_and_unknown_requests_are_recorded_and_ignored() {
    let t = App::start().await;
    let body = json!({"Body": {"stkCallback": {"MerchantRequestID": "1", "CheckoutRequestID": "ws_CO_never",
        "ResultCode": 0, "ResultDesc": "ok", "CallbackMetadata": {"Item": [{"Name": "Amount", "Value": 10},
        {"Name": "MpesaReceiptNumber", "Value": "FAKE000001"}]}}}});
    let wrong = t
        .app
        .http
        .post(format!("{}/hooks/daraja/not-the-token/stk", t.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback'")
            .await,
        0
    );
    let url = format!("{}/hooks/daraja/{}/stk", t.base, hook_token(&t).await);
    let ok = t.app.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let ok = t.app.http.post(&url).body("not json").send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback' AND status = 'Unknown request'").await,
        1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback' AND status = 'Malformed'").await,
        1
    );
    assert_eq!(t.scalar_i64("SELECT count(*) FROM mpesa.payments").await, 0);
}

#[tokio::test]
async fn c2b_validation_matches_normalised_account_numbers_and_confirmation_credits_once() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (sub, inv, acct, due) = t.subscriber(&admin, 2500, "0712345678").await;
    // Registered at start.
    let registered = eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Register' AND status = 'Registered'").await == 1).then_some(())
    })
    .await;
    assert!(registered.is_some());
    // Typed with spaces: still the subscriber.
    let typed = format!(" {} {} ", &acct[..3], &acct[3..]);
    t.simulate(due.trim_end_matches(".00"), "254712345678", &typed)
        .await;
    let conf = t.wait_callback("/c2b/confirmation", 1).await;
    assert!(t.invoice_status(&admin, &inv, "Paid").await);
    let receipt = conf[0]["body"]["TransID"].as_str().unwrap().to_string();
    // The payer arrives hashed.
    assert_eq!(conf[0]["body"]["MSISDN"].as_str().unwrap().len(), 64);
    for _ in 0..10 {
        assert_eq!(t.replay(&conf[0]).await, StatusCode::OK);
    }
    let all = futures::future::join_all((0..10).map(|_| t.replay(&conf[0]))).await;
    assert!(all.iter().all(|s| *s == StatusCode::OK));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.billing_payments(&receipt).await, 1);
    let p = t.get("/api/mpesa/payments", &admin).await;
    assert_eq!(p.body["totalDocs"], 1, "{:?}", p.body);
    assert_eq!(p.body["docs"][0]["subscriber"], sub.as_str());
    assert_eq!(p.body["docs"][0]["accountReference"], acct.as_str());
    assert_eq!(p.body["docs"][0]["billRefNumber"], typed.trim());

    // A missing check digit is not a match: rejected with C2B00012, never confirmed.
    t.simulate("100", "254712345678", &acct[..acct.len() - 1])
        .await;
    let v = t.wait_callback("/c2b/validation", 2).await;
    assert_eq!(v.len(), 2);
    let rejected = eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Validation' AND result_code = 'C2B00012'").await == 1).then_some(())
    })
    .await;
    assert!(rejected.is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(t.callbacks_to("/c2b/confirmation").len(), 1);
}

#[tokio::test]
async fn with_accept_all_unknown_accounts_are_kept_as_unallocated_with_the_payer_suggested() {
    let t = App::start_with(daraja_standin::Config::default(), |o| {
        o.c2b_accept_all = true
    })
    .await;
    let admin = t.app.admin_token().await;
    let (sub, _, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    t.simulate("700", "254712345678", "WRONG-REF").await;
    let kept = eventually(15, || async {
        let r = t.app.get("/api/billing/unallocatedPayments", &admin).await;
        (r.body["totalDocs"] == 1).then_some(r.body)
    })
    .await
    .expect("Billing keeps the money as unallocated");
    assert_eq!(kept["docs"][0]["accountReference"], "WRONG-REF");
    let p = t.get("/api/mpesa/payments", &admin).await;
    assert_eq!(
        p.body["docs"][0]["suggestedSubscriber"],
        sub.as_str(),
        "{:?}",
        p.body
    );
    assert!(p.body["docs"][0]["subscriber"].is_null());
}

#[tokio::test]
async fn a_missed_c2b_confirmation_is_recovered_by_pull_transactions_once() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (_, inv, acct, due) = t.subscriber(&admin, 2500, "0712345678").await;
    eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Register'")
            .await
            == 1)
            .then_some(())
    })
    .await
    .unwrap();
    // Paid, but Daraja never calls the confirmation URL.
    t.simulate(due.trim_end_matches(".00"), "254700000404", &acct)
        .await;
    t.wait_callback("/c2b/validation", 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(t.callbacks_to("/c2b/confirmation").is_empty());
    let r = t.post("/api/mpesa/c2b/pull", &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["credited"], 1);
    assert!(t.invoice_status(&admin, &inv, "Paid").await);
    let r = t.post("/api/mpesa/c2b/pull", &admin, json!({})).await;
    assert_eq!(r.body["credited"], 0, "a second pull credits nothing");
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM billing.payments").await,
        1
    );
}

#[tokio::test]
async fn confirmations_arriving_while_nats_is_down_reach_billing_once_when_it_returns() {
    let mut t = App::start().await;
    let admin = t.app.admin_token().await;
    let mut subs = vec![];
    for _ in 0..3 {
        subs.push(t.subscriber(&admin, 1800, "0712345678").await);
    }
    let registered = eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Register' AND status = 'Registered'").await == 1).then_some(())
    })
    .await;
    assert!(registered.is_some());
    t.app.nats.stop().await;
    for (_, _, acct, due) in &subs {
        t.simulate(due.trim_end_matches(".00"), "254712345678", acct)
            .await;
    }
    let conf = t.wait_callback("/c2b/confirmation", 3).await;
    // Each confirmation replayed while NATS is still down.
    for c in &conf {
        for _ in 0..3 {
            assert_eq!(t.replay(c).await, StatusCode::OK);
        }
    }
    let credited = eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.payments").await == 3).then_some(())
    })
    .await;
    assert!(credited.is_some(), "M-Pesa keeps working without NATS");
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.payment.confirmed' AND published_at IS NULL").await,
        3,
        "the outbox holds the events"
    );
    t.app.nats.restart().await.expect("nats-server restarts");
    for (_, inv, _, _) in &subs {
        assert!(
            t.invoice_status(&admin, inv, "Paid").await,
            "invoice {inv} Paid once NATS is back"
        );
    }
    for c in &conf {
        let receipt = c["body"]["TransID"].as_str().unwrap();
        assert_eq!(t.billing_payments(receipt).await, 1, "{receipt}");
    }
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM billing.payments").await,
        3
    );
}
