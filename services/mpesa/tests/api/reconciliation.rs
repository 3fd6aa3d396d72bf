//! Reconciliation: every receipt in exactly one place, and bad parameters named.

use super::*;

#[tokio::test]
async fn reconciliation_puts_every_receipt_in_exactly_one_place_and_names_bad_parameters() {
    let t = App::start_with(daraja_standin::Config::default(), |o| {
        o.c2b_accept_all = true
    })
    .await;
    let admin = t.app.admin_token().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let (tech, _) = t.app.staff_token("Technician").await;
    let (c, _) = t.earned_commission(&admin, "1500", 2500).await;
    let stk_amount: String =
        sqlx::query_scalar("SELECT amount::text FROM mpesa.payments WHERE source = 'stk'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    t.post(
        &format!("/api/mpesa/commissions/{c}/approve"),
        &admin,
        json!({}),
    )
    .await;
    t.commission_status(&admin, &c, "Paid").await;
    // Money for an account that does not exist: unallocated.
    t.simulate("700", "254733000111", "NOSUCH99").await;
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Africa::Nairobi)
        .date_naive();
    let q = format!(
        "/api/mpesa/reconciliation?from={}&to={}",
        today.pred_opt().unwrap(),
        today.succ_opt().unwrap()
    );
    let r = eventually(20, || async {
        let r = t.get(&q, &bm).await;
        (r.body["receipts"]["count"] == 2 && r.body["matched"]["count"] == 1).then_some(r)
    })
    .await
    .expect("both receipts, the STK one matched to its invoice");
    let b = &r.body;
    assert_eq!(b["matched"]["total"], stk_amount.as_str(), "{b:?}");
    assert_eq!(b["unallocated"]["count"], 1);
    assert_eq!(b["unallocated"]["total"], "700.00");
    let want_total =
        stk_amount.parse::<rust_decimal::Decimal>().unwrap() + rust_decimal::Decimal::from(700);
    assert_eq!(
        b["receipts"]["total"],
        isp_platform::money::format(want_total).as_str()
    );
    assert_eq!(b["balanced"], true);
    assert_eq!(b["unallocatedReceipts"][0]["billRefNumber"], "NOSUCH99");
    assert_eq!(b["bySource"]["c2b"]["total"], "700.00");
    assert_eq!(b["commissionsPaid"]["count"], 1);
    assert_eq!(b["commissionsPaid"]["total"], "1500.00");
    assert_eq!(
        b["net"],
        isp_platform::money::format(want_total - rust_decimal::Decimal::from(1500)).as_str()
    );
    // Another range holds none of it.
    let r = t
        .get(
            "/api/mpesa/reconciliation?from=2020-01-01&to=2020-01-31",
            &admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["receipts"]["count"], 0);
    assert_eq!(r.body["balanced"], true);

    let r = t.get("/api/mpesa/reconciliation", &bm).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_paths(), vec!["from", "to"]);
    let r = t
        .get(
            "/api/mpesa/reconciliation?from=2026-13-01&to=yesterday&x=1",
            &bm,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(paths, vec!["from", "to", "x"]);
    let r = t
        .get(
            "/api/mpesa/reconciliation?from=2026-02-01&to=2026-01-01",
            &bm,
        )
        .await;
    assert_eq!(r.error_paths(), vec!["to"]);
    let r = t
        .get(
            "/api/mpesa/reconciliation?from=2026-01-01&to=2026-01-02",
            &tech,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}
