//! The WhatsApp webhook: the handshake, and posts authenticated before anything is stored.

use super::*;

#[tokio::test]
async fn handshake_answers_the_challenge_only_with_our_token() {
    let w = world().await;
    let get = |q: String| {
        let url = format!("{}/api/wa-parser/whatsapp/webhook?{q}", w.app.base);
        let http = w.app.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let (s, body) = get(format!(
        "hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=1158201444"
    ))
    .await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "1158201444"));
    let (s, _) = get("hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1".into()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = get(format!(
        "hub.mode=unsubscribe&hub.verify_token={VERIFY}&hub.challenge=1"
    ))
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = get("hub.challenge=1".into()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn posts_are_authenticated_before_anything_is_stored() {
    let w = world().await;
    let v = wa::text_webhook(
        PHONE_ID,
        &Sender::phone("254711000001"),
        "wamid.sig",
        "HELP",
    );
    let body = serde_json::to_vec(&v).unwrap();
    let good = wa::sign(APP_SECRET, &body);
    // Missing, wrong secret, garbage, and a body altered after signing.
    assert_eq!(
        post_raw(&w, &body, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post_raw(&w, &body, Some(&wa::sign("not-the-secret", &body)))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post_raw(&w, &body, Some("sha256=00")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut altered = body.clone();
    let at = altered.len() - 10;
    altered[at] ^= 1;
    assert_eq!(
        post_raw(&w, &altered, Some(&good)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Not JSON, even signed, is not stored either.
    assert_eq!(
        post_raw(&w, b"{oops", Some(&wa::sign(APP_SECRET, b"{oops")))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await,
        0
    );
    // Statuses are acknowledged and ignored.
    let r = webhook(
        &w,
        &wa::status_webhook(PHONE_ID, "wamid.x", "254711000001", "delivered"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await,
        0
    );
    // The good one is.
    assert_eq!(
        post_raw(&w, &body, Some(&good)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        wa_scalar::<i64>(&w, "SELECT count(*) FROM inbound_messages").await,
        1
    );
}
