//! Daraja's OAuth token: shared by replicas and renewed once when Daraja refuses it.

use super::*;

#[tokio::test]
async fn replicas_share_one_daraja_token_and_renew_it_once_when_daraja_refuses_it() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (_, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    eventually(10, || async {
        (t.daraja.tokens_issued() >= 1).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(t.daraja.tokens_issued(), 1);
    // Another replica's view of the same schema.
    let d = svc_mpesa::daraja::Daraja::new(options(&t.daraja, &t.base).daraja, t.ctx.pool.clone())
        .unwrap();
    let _ = d.token(None).await.unwrap();
    assert_eq!(t.daraja.tokens_issued(), 1, "the shared token is reused");
    // Daraja cancels it (someone fetched another): the next call renews once.
    t.daraja.expire_token();
    let r = t
        .post("/api/mpesa/stk-push", &admin, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(t.daraja.tokens_issued(), 2);
}
