//! Partner commissions paid by B2C: earning, approval, retries, the rate in force, booking.

use super::*;

#[tokio::test]
async fn a_referral_earns_one_commission_that_admin_approves_and_b2c_pays_once() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let (tech, _) = t.app.staff_token("Technician").await;
    let (c, partner) = t.earned_commission(&admin, "1500.50", 2500).await;

    let r = t.get(&format!("/api/mpesa/commissions/{c}"), &bm).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "Pending Approval");
    assert_eq!(r.body["partner"], partner.as_str());
    assert_eq!(r.body["amount"], "1500.50");
    // B2C pays whole shillings: half away from zero.
    assert_eq!(r.body["payoutAmount"], "1501.00");
    assert_eq!(r.body["basis"], "Flat");
    let list = t.get("/api/mpesa/commissions", &admin).await;
    assert_eq!(list.body["totalDocs"], 1, "{:?}", list.body);
    assert_eq!(
        t.get("/api/mpesa/commissions", &tech).await.status,
        StatusCode::FORBIDDEN
    );
    let path = format!("/api/mpesa/commissions/{c}/approve");
    let r = t.post(&path, &bm, json!({})).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "only Admin approves: {:?}",
        r.body
    );

    let r = t.post(&path, &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(
        matches!(r.body["doc"]["status"].as_str(), Some("Sent" | "Paid")),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.body["doc"]["originatorConversationId"],
        format!("{c}-1").as_str()
    );
    assert_eq!(r.body["doc"]["phone"], "+254722000111");
    let again = t.post(&path, &admin, json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);

    let paid = t.commission_status(&bm, &c, "Paid").await;
    let receipt = paid["receipt"].as_str().unwrap().to_string();
    assert!(!receipt.is_empty());
    assert_eq!(paid["paidAmount"], "1501.00");

    // The result callback replayed ten times in a row and ten at once.
    let cbs = t.wait_callback("/b2c/result", 1).await;
    for _ in 0..10 {
        assert_eq!(t.replay(&cbs[0]).await, StatusCode::OK);
    }
    let all = futures::future::join_all((0..10).map(|_| t.replay(&cbs[0]))).await;
    assert!(all.iter().all(|s| *s == StatusCode::OK), "{all:?}");
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.commission.paid'")
            .await,
        1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Result'")
            .await,
        21
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Result' AND status = 'Settled already (Paid)'").await,
        20
    );
    // Billing books it once as an expense, the receipt as its reference.
    let booked = eventually(20, || async {
        let r = t
            .app
            .get(
                "/api/billing/expenses?where[category][equals]=Commissions",
                &bm,
            )
            .await;
        (r.body["totalDocs"] == 1).then_some(r.body)
    })
    .await
    .expect("an expense in Billing");
    let e = &booked["docs"][0];
    assert_eq!(e["amount"], "1501.00");
    assert_eq!(e["vendor"], "Jane Caretaker");
    assert!(
        e["description"].as_str().unwrap().contains(&receipt),
        "{e:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM billing.expenses WHERE category = 'Commissions'")
            .await,
        1
    );
    // The request is in the log, without the SecurityCredential.
    let raw: Value =
        sqlx::query_scalar("SELECT raw FROM mpesa.transactions WHERE kind = 'B2C Request'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(raw["request"]["SecurityCredential"], "<redacted>");
    assert_eq!(raw["request"]["Amount"], 1501);
    // A second paid invoice of the same subscriber earns nothing more.
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.commissions").await,
        1
    );
}

#[tokio::test]
async fn approval_refuses_what_b2c_would_refuse_and_a_failed_commission_may_be_retried() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (small, _) = t.earned_commission(&admin, "5", 2500).await;
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{small}/approve"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_paths(), vec!["payoutAmount"]);
    let retry = t
        .post(
            &format!("/api/mpesa/commissions/{small}/retry"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{:?}", retry.body);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Request'")
            .await,
        0,
        "nothing is sent"
    );
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{}/approve", uuid::Uuid::now_v7()),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    let r = t
        .post(
            "/api/mpesa/commissions/not-an-id/approve",
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("id"));

    // The stand-in fails B2C of KES 2040 (unregistered customer).
    let (c, _) = t.earned_commission(&admin, "2040", 2500).await;
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{c}/approve"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let failed = t.commission_status(&admin, &c, "Failed").await;
    assert_eq!(failed["resultCode"], "2040");
    assert!(failed["receipt"].is_null());
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{c}/retry"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["attempts"], 2);
    assert_eq!(
        r.body["doc"]["originatorConversationId"],
        format!("{c}-2").as_str()
    );
    t.commission_status(&admin, &c, "Failed").await;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT originator_conversation_id FROM mpesa.transactions WHERE kind = 'B2C Request' ORDER BY created_at",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(ids, vec![format!("{c}-1"), format!("{c}-2")]);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.commission.paid'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_queue_timeout_leaves_the_commission_sent_until_transaction_status_settles_it() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    // The stand-in answers B2C of KES 1111 with the queue-timeout callback only.
    let (c, _) = t.earned_commission(&admin, "1111", 2500).await;
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{c}/approve"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    t.wait_callback("/b2c/timeout", 1).await;
    let paid = t.commission_status(&admin, &c, "Paid").await;
    assert!(paid["receipt"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(paid["statusQueries"].as_i64().unwrap() >= 1);
    assert!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Timeout'")
            .await
            >= 1
    );
    assert!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'Transaction Status Result' AND status = 'Paid'").await
            == 1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.commission.paid'")
            .await,
        1
    );
}

#[tokio::test]
async fn commissions_up_to_the_setting_are_approved_and_paid_automatically() {
    let t = App::start_with(daraja_standin::Config::default(), |o| {
        o.commissions.auto_approve_up_to = Some(rust_decimal::Decimal::from(2000))
    })
    .await;
    let admin = t.app.admin_token().await;
    let (c, _) = t.earned_commission(&admin, "1500", 2500).await;
    let paid = t.commission_status(&admin, &c, "Paid").await;
    assert_eq!(paid["approvedBy"], "Automatic");
    let (big, _) = t.earned_commission(&admin, "3000", 2500).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = t
        .get(&format!("/api/mpesa/commissions/{big}"), &admin)
        .await;
    assert_eq!(r.body["status"], "Pending Approval", "{:?}", r.body);
}

#[tokio::test]
async fn a_b2c_request_daraja_took_before_a_crash_is_not_paid_twice_when_the_worker_sends_it_again()
{
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (c, _) = t.earned_commission(&admin, "1500", 2500).await;
    let ocid = format!("{c}-1");
    // What an approval commits before it sends...
    sqlx::query(
        "UPDATE mpesa.commissions SET status = 'Approved', attempts = 1, originator_conversation_id = $2,
             approved_by = 'admin', approved_at = now(), send_claimed_until = now() + interval '1 hour'
         WHERE id = $1::uuid",
    )
    .bind(&c)
    .bind(&ocid)
    .execute(&t.pool)
    .await
    .unwrap();
    // ...then the request reaches Daraja and the process dies: nothing recorded,
    // and the result callback goes nowhere.
    let o = options(&t.daraja, &t.base);
    let daraja = svc_mpesa::daraja::Daraja::new(o.daraja, t.ctx.pool.clone()).unwrap();
    let (_, res) = daraja
        .b2c(
            &ocid,
            1500,
            "254722000111",
            "Partner referral commission",
            "http://127.0.0.1:9/lost",
            "http://127.0.0.1:9/lost",
        )
        .await;
    assert!(res.is_ok(), "{res:?}");
    let lost = t.wait_callback("/lost", 1).await;
    let receipt = lost[0]["body"]["Result"]["TransactionID"]
        .as_str()
        .unwrap()
        .to_string();
    // After the restart the claim has expired: the worker sends the attempt again.
    sqlx::query("UPDATE mpesa.commissions SET send_claimed_until = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&c)
        .execute(&t.pool)
        .await
        .unwrap();
    let paid = t.commission_status(&admin, &c, "Paid").await;
    assert_eq!(
        paid["receipt"],
        receipt.as_str(),
        "the one payment Daraja made"
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Request' AND status LIKE 'Duplicate%'").await,
        1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.commission.paid'")
            .await,
        1
    );
    // Daraja made one payment: one result (to the lost URL), no second.
    assert_eq!(t.callbacks_to("/b2c/result").len(), 0);
}

#[tokio::test]
async fn the_commission_is_at_the_rate_in_force_at_the_conversion_whatever_order_events_arrive() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (sub, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    let partner = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    let snap = |rate: i64, at| isp_events::payloads::PartnerSnapshot {
        commission_rate: rate.into(),
        mpesa_number: "+254722000111".into(),
        ..isp_testkit::fixtures::partner_snapshot(partner, "Jane Caretaker", at)
    };
    // The conversion reaches M-Pesa before anything about the partner.
    t.app
        .publish(
            "crm",
            &isp_events::payloads::LeadConverted {
                lead_id: uuid::Uuid::now_v7(),
                referred_by: Some(partner),
                subscriber_id: sub.parse().unwrap(),
                converted_at: now - chrono::Duration::minutes(10),
            },
        )
        .await;
    // The partner had 1000 then; 3000 since.
    t.app
        .publish(
            "core",
            &isp_events::payloads::PartnerCreated(snap(1000, now - chrono::Duration::hours(1))),
        )
        .await;
    t.app
        .publish(
            "core",
            &isp_events::payloads::PartnerUpdated(snap(3000, now - chrono::Duration::minutes(1))),
        )
        .await;
    let r = t
        .post("/api/mpesa/stk-push", &admin, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let c = eventually(20, || async {
        let r = t.get("/api/mpesa/commissions", &admin).await;
        (r.body["totalDocs"] == 1).then(|| r.body["docs"][0].clone())
    })
    .await
    .expect("a commission");
    assert_eq!(c["commissionRate"], "1000.00");
    assert_eq!(c["amount"], "1000.00");
    assert_eq!(c["invoice"], inv.as_str());
    assert_eq!(c["subscriber"], sub.as_str());
}

#[tokio::test]
async fn two_simultaneous_approvals_send_one_payment() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (c, _) = t.earned_commission(&admin, "1500", 2500).await;
    let path = format!("/api/mpesa/commissions/{c}/approve");
    let (a, b) = tokio::join!(
        t.post(&path, &admin, json!({})),
        t.post(&path, &admin, json!({}))
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{:?} {:?}", a.body, b.body);
    t.commission_status(&admin, &c, "Paid").await;
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Request'")
            .await,
        1
    );
}

#[tokio::test]
async fn billing_books_a_paid_commission_once_however_often_it_hears_of_it() {
    let t = App::start().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let paid = isp_events::payloads::MpesaCommissionPaid {
        commission: uuid::Uuid::now_v7(),
        partner: uuid::Uuid::now_v7(),
        partner_name: "Jane Caretaker".into(),
        amount: rust_decimal::Decimal::from(1500),
        receipt: "TBK1234567".into(),
        phone: "+254722000111".into(),
        lead: None,
        subscriber: None,
        paid_at: chrono::Utc::now(),
    };
    // Two events (two ids: JetStream's de-duplication does not apply).
    t.app.publish("mpesa", &paid).await;
    let last = t.app.publish("mpesa", &paid).await;
    t.app.processed_by("billing", "billing-mpesa", last).await;
    let r = t
        .app
        .get(
            "/api/billing/expenses?where[category][equals]=Commissions",
            &bm,
        )
        .await;
    assert_eq!(r.body["totalDocs"], 1, "{:?}", r.body);
    assert_eq!(
        r.body["docs"][0]["id"],
        paid.commission.to_string().as_str()
    );
    assert_eq!(r.body["docs"][0]["amount"], "1500.00");
    assert!(r.body["docs"][0]["description"]
        .as_str()
        .unwrap()
        .contains("TBK1234567"));
}
