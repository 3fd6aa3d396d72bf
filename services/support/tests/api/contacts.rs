//! Contacts: E.164 numbers, unique, imported from CSV line by line.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn contacts_are_e164_unique_and_import_from_csv_by_line() {
    let app = app().await;
    let (token, _) = agent(&app).await;
    let r = app
        .post(
            "/api/support/contacts",
            &token,
            json!({"phoneNumber": "0712 345 678", "fullName": "Jane Doe", "source": "Marketing List"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["phoneNumber"], "+254712345678");
    let r = app
        .post(
            "/api/support/contacts",
            &token,
            json!({"phoneNumber": "+254712345678"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("phoneNumber"));
    let r = app
        .post(
            "/api/support/contacts",
            &token,
            json!({"phoneNumber": "12", "extra": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(paths(&r), ["extra", "phoneNumber"]);

    let csv = "fullName,PhoneNumber,source\n\
               Ann One,0722000001,Fair\n\
               Bad Number,12345,Fair\n\
               Jane Again,+254712345678,Fair\n\
               Ben Two,0722 000 002,\n\
               Ann Twice,254722000001,Fair\n";
    let res = app
        .http
        .post(format!("{}/api/support/contacts/import", app.base))
        .header("authorization", format!("JWT {token}"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["imported"], 2, "{body}");
    let lines: Vec<u64> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 6], "{body}");
    assert!(body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["path"] == "phoneNumber"));
    assert_eq!(
        count(&app, "SELECT count(*) FROM support.contacts").await,
        3
    );
    // No phoneNumber column: nothing to import.
    let res = app
        .http
        .post(format!("{}/api/support/contacts/import", app.base))
        .header("authorization", format!("JWT {token}"))
        .body("name,phone\nA,0722000009\n")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}
