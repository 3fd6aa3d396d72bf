//! Expenses and their receipt files: who may upload and download them, size limits, deletion.

use uuid::Uuid;

use super::*;

fn multipart(filename: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "XBOUNDARYX";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
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
