//! Amounts too large for the ledger are bad input, not server errors.

use super::*;

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
