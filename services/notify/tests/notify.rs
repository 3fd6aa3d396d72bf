//! Notify against real Postgres and NATS JetStream and the gateway stand-ins
//! (`standins/sms`). Requests arrive the way Support publishes them: through an
//! outbox in another schema, relayed to JetStream.

use std::sync::Arc;
use std::time::Duration;

use isp_events::outbox::enqueue;
use isp_events::payloads::*;
use isp_platform::runtime::{self, Shared};
use isp_platform::ServiceContext;
use isp_standin_sms::{twilio_signature, Options, StandIns};
use isp_testkit::{eventually, TestApp};
use serde_json::Value;
use sqlx::PgPool;
use svc_notify::provider::smtp::{SmtpConfig, SmtpTls};
use svc_notify::provider::{africastalking::AfricasTalkingConfig, twilio::TwilioConfig};
use svc_notify::{EmailProvider, Settings, SmsProvider};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOKEN: &str = "at-callback-token-0123456789abcdef";

#[derive(Clone, Copy, PartialEq)]
enum Gateway {
    AfricasTalking,
    Twilio,
    Log,
}

struct Env {
    app: TestApp,
    gw: StandIns,
    /// Where Notify listens (bound before it starts, so the gateways know it).
    base: String,
    listener: Option<tokio::net::TcpListener>,
    producer: PgPool,
    notify: Option<(Arc<ServiceContext>, CancellationToken)>,
}

impl Env {
    async fn new(opts: Options) -> Env {
        Self::with(TestApp::spawn(&[]).await, opts).await
    }

    /// With Core, for staff tokens.
    async fn with_core(opts: Options) -> Env {
        let core: (runtime::ServiceInfo, runtime::StartFn) =
            (svc_core::INFO, |c| Box::pin(svc_core::start(c)));
        Self::with(TestApp::spawn(&[core]).await, opts).await
    }

    async fn with(app: TestApp, opts: Options) -> Env {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let gw = StandIns::start(Options {
            at_delivery_callback: Some(format!(
                "{base}/api/notify/callbacks/africastalking/{TOKEN}/delivery"
            )),
            ..opts
        })
        .await
        .unwrap();
        // A requester the way Support is one: its own schema, outbox and relay.
        let producer = app.db.schema_pool("support", 3).await.unwrap();
        isp_events::migrate(&producer, &isp_platform::runtime::NO_MIGRATIONS)
            .await
            .unwrap();
        let bus = isp_events::Bus::from_client(app.shared.nats.clone());
        bus.ensure_stream().await.unwrap();
        isp_events::spawn_relay(producer.clone(), bus.js, app.shared.shutdown.clone());
        Env {
            app,
            gw,
            base,
            listener: Some(listener),
            producer,
            notify: None,
        }
    }

    fn settings(&self, gateway: Gateway) -> Settings {
        let o = self.gw.options();
        let twilio_status_url = format!("{}/api/notify/callbacks/twilio/status", self.base);
        Settings {
            sms: match gateway {
                Gateway::AfricasTalking => SmsProvider::AfricasTalking(AfricasTalkingConfig {
                    username: o.at_username.clone(),
                    api_key: o.at_api_key.clone(),
                    sender_id: Some("ISP".into()),
                    base_url: self.gw.base_url.clone(),
                }),
                Gateway::Twilio => SmsProvider::Twilio(TwilioConfig {
                    account_sid: o.twilio_account_sid.clone(),
                    auth_token: o.twilio_auth_token.clone(),
                    from: Some("+15005550006".into()),
                    messaging_service_sid: None,
                    base_url: self.gw.base_url.clone(),
                    status_callback_url: twilio_status_url.clone(),
                }),
                Gateway::Log => SmsProvider::Log,
            },
            email: if gateway == Gateway::Log {
                EmailProvider::Log
            } else {
                EmailProvider::Smtp(SmtpConfig {
                    host: "127.0.0.1".into(),
                    port: self.gw.smtp_addr.port(),
                    tls: SmtpTls::None,
                    username: None,
                    password: None,
                    from: "ISP <noreply@isp.test>".into(),
                    default_subject: "A message from your ISP".into(),
                })
            },
            sms_rate_per_second: 0.0,
            email_rate_per_second: 0.0,
            concurrency: 8,
            request_consumers: 4,
            max_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            at_callback_token: TOKEN.into(),
            twilio_auth_token: Some(o.twilio_auth_token.clone()),
            twilio_status_url,
            twilio_inbound_url: format!("{}/api/notify/callbacks/twilio/inbound", self.base),
        }
    }

    async fn start(&mut self, settings: Settings) {
        let stop = self.app.shared.shutdown.child_token();
        let shared = Shared {
            shutdown: stop.clone(),
            ..self.app.shared.clone()
        };
        let ctx = runtime::context(svc_notify::INFO, &shared).await.unwrap();
        let router = svc_notify::start_with(ctx.clone(), settings).await.unwrap();
        let listener = self.listener.take().expect("Notify starts once per Env");
        let sd = stop.clone();
        tokio::spawn(async move {
            let _ = isp_platform::http::serve(listener, router, sd).await;
        });
        self.notify = Some((ctx, stop));
    }

    fn pool(&self) -> PgPool {
        self.notify.as_ref().expect("notify started").0.pool.clone()
    }

    async fn request(&self, req: &NotificationRequest) {
        let mut tx = self.producer.begin().await.unwrap();
        enqueue(
            &mut tx,
            "support",
            &SupportNotificationRequested(req.clone()),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    async fn status(&self, id: Uuid) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool())
            .await
            .unwrap()
    }

    async fn wait_status(&self, id: Uuid, want: &str, secs: u64) -> Value {
        let ok = eventually(secs, || async {
            (self.status(id).await.as_deref() == Some(want)).then_some(())
        })
        .await;
        let row = self.row(id).await;
        assert!(ok.is_some(), "delivery {id} never reached {want}: {row}");
        row
    }

    async fn row(&self, id: Uuid) -> Value {
        sqlx::query_scalar("SELECT to_jsonb(d) FROM deliveries d WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool())
            .await
            .unwrap()
            .unwrap_or(Value::Null)
    }

    /// The `notification.status` events Notify published about `id`, in order.
    async fn events(&self, id: Uuid) -> Vec<Value> {
        sqlx::query_scalar(
            "SELECT payload->'data' FROM outbox WHERE type = 'notification.status' \
             AND payload->'data'->>'deliveryId' = $1 ORDER BY created_at, id",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool())
        .await
        .unwrap()
    }

    async fn statuses(&self, id: Uuid) -> Vec<String> {
        self.events(id)
            .await
            .iter()
            .map(|e| e["status"].as_str().unwrap().to_string())
            .collect()
    }

    async fn post_form(
        &self,
        path: &str,
        form: &[(&str, String)],
        sig: Option<String>,
    ) -> (u16, Value) {
        let mut req = self
            .app
            .http
            .post(format!("{}{path}", self.base))
            .form(form);
        if let Some(s) = sig {
            req = req.header("X-Twilio-Signature", s);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn sms(to: &str, body: &str) -> NotificationRequest {
    NotificationRequest {
        id: Uuid::now_v7(),
        channel: NotificationChannel::Sms,
        recipient: to.into(),
        subject: None,
        body: body.into(),
        category: NotificationCategory::Transactional,
        reference: Some(format!("msg-{}", Uuid::new_v4().simple())),
    }
}

async fn outbox_of(env: &Env, ty: &str) -> Vec<Value> {
    sqlx::query_scalar("SELECT payload->'data' FROM outbox WHERE type = $1 ORDER BY created_at")
        .bind(ty)
        .fetch_all(&env.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_request_is_sent_once_through_africastalking_and_reported_accepted_then_delivered() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms(
        "0712 345 678",
        "Invoice INV-000001: KES 2,500.00 due 2026-12-05.",
    );
    // The same request delivered twice (a requester's retry): one send.
    env.request(&req).await;
    env.request(&req).await;
    let row = env.wait_status(req.id, "Delivered", 20).await;
    assert_eq!(row["provider"], "africastalking");
    assert_eq!(row["recipient"], "+254712345678");
    assert_eq!(row["cost"], 0.8);
    assert_eq!(row["cost_currency"], "KES");
    let sent = env.gw.sms();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, "+254712345678");
    assert_eq!(sent[0].message, req.body);
    assert_eq!(sent[0].from.as_deref(), Some("ISP"));
    assert_eq!(row["provider_message_id"], sent[0].message_id.as_str());
    // Accepted (AT 101) is not Delivered; the report made it Delivered.
    assert_eq!(
        env.statuses(req.id).await,
        ["Queued", "Accepted", "Delivered"]
    );
    let last = env.events(req.id).await.pop().unwrap();
    assert_eq!(last["requester"], "support");
    assert_eq!(last["reference"], req.reference.clone().unwrap().as_str());
    assert_eq!(last["providerMessageId"], sent[0].message_id.as_str());
    assert_eq!(last["cost"], "0.8000");
    assert_eq!(last["costCurrency"], "KES");
    assert_eq!(last["channel"], "sms");
    // A third copy, given time to arrive: still one send.
    env.request(&req).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(env.gw.attempts(), 1);
}

#[tokio::test]
async fn notify_stopped_while_100_are_requested_sends_all_of_them_once_when_it_starts() {
    let mut env = Env::new(Options::default()).await;
    let reqs: Vec<_> = (0..100)
        .map(|i| {
            sms(
                &format!("+2547{:08}", 10_000_000 + i),
                &format!("Outage notice {i}"),
            )
        })
        .collect();
    for r in &reqs {
        env.request(r).await;
    }
    // Published while no Notify runs; some twice, as a requester's retry would.
    for r in reqs.iter().take(10) {
        env.request(r).await;
    }
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let all = eventually(60, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'Delivered'")
                .fetch_one(&env.pool())
                .await
                .unwrap();
        (n == 100).then_some(())
    })
    .await;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM deliveries GROUP BY 1 ORDER BY 1")
            .fetch_all(&env.pool())
            .await
            .unwrap();
    assert!(
        all.is_some(),
        "not all 100 delivered: {counts:?}, {} sent, {} callbacks",
        env.gw.sms().len(),
        env.gw.callbacks().len()
    );
    let sent = env.gw.sms();
    assert_eq!(sent.len(), 100, "each sent once");
    let mut bodies: Vec<_> = sent.iter().map(|s| s.message.clone()).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 100);
    assert_eq!(env.gw.attempts(), 100);
}

#[tokio::test]
async fn a_gateway_answering_500_for_a_while_is_retried_with_backoff_and_the_message_sent() {
    let mut env = Env::new(Options::default()).await;
    env.gw.fail_next(3);
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms(
        "+254712000001",
        "Your payment of KES 1,000.00 was received.",
    );
    env.request(&req).await;
    let row = env.wait_status(req.id, "Delivered", 30).await;
    assert_eq!(row["attempts"], 4);
    assert_eq!(env.gw.attempts(), 4);
    assert_eq!(env.gw.sms().len(), 1);
    assert!(row["failure_reason"].is_null());
    assert!(row["last_error"].as_str().unwrap().contains("500"));
    // Retries do not publish: the requester sees Queued, then progress.
    assert_eq!(
        env.statuses(req.id).await,
        ["Queued", "Accepted", "Delivered"]
    );
}

#[tokio::test]
async fn a_gateway_that_stays_down_fails_the_message_after_the_attempt_limit() {
    let mut env = Env::new(Options::default()).await;
    env.gw.fail_next(100);
    let mut s = env.settings(Gateway::Twilio);
    s.max_attempts = 3;
    env.start(s).await;
    let req = sms("+254712000002", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Failed", 30).await;
    assert_eq!(env.gw.attempts(), 3);
    let reason = row["failure_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Retries exhausted after 3 attempts"),
        "{reason}"
    );
    assert_eq!(env.statuses(req.id).await, ["Queued", "Failed"]);
}

#[tokio::test]
async fn an_invalid_number_fails_once_with_the_gateways_reason() {
    let mut env = Env::new(Options::default()).await;
    env.gw.mark_invalid("+254712000003");
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms("+254712000003", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Failed", 20).await;
    assert_eq!(row["failure_reason"], "InvalidPhoneNumber (403)");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(env.gw.attempts(), 1, "a permanent failure is not retried");
    assert_eq!(env.statuses(req.id).await, ["Queued", "Failed"]);
    let last = env.events(req.id).await.pop().unwrap();
    assert_eq!(last["failureReason"], "InvalidPhoneNumber (403)");
    // Not a phone number at all: refused without asking the gateway.
    let bad = sms("not-a-number", "Hello");
    env.request(&bad).await;
    let row = env.wait_status(bad.id, "Failed", 20).await;
    assert!(row["failure_reason"]
        .as_str()
        .unwrap()
        .starts_with("InvalidRecipient"));
    assert_eq!(row["provider"], "none");
    assert_eq!(env.gw.attempts(), 1);
}

#[tokio::test]
async fn twilio_status_callbacks_are_verified_and_never_move_a_delivery_backwards() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::Twilio)).await;
    let req = sms("+254712000004", "Ticket TCK-000042 is resolved.");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Delivered", 20).await;
    assert_eq!(row["provider"], "twilio");
    let sid = row["provider_message_id"].as_str().unwrap().to_string();
    assert!(sid.starts_with("SM"));
    assert_eq!(
        env.statuses(req.id).await,
        ["Queued", "Accepted", "Sent", "Delivered"]
    );

    let path = "/api/notify/callbacks/twilio/status";
    let url = format!("{}{path}", env.base);
    let token = env.gw.options().twilio_auth_token.clone();
    let sign = |f: &[(&str, String)]| Some(twilio_signature(&token, &url, f));
    // A late `sent`, correctly signed: acknowledged, nothing changes.
    let late = vec![
        ("MessageSid", sid.clone()),
        ("MessageStatus", "sent".to_string()),
    ];
    assert_eq!(env.post_form(path, &late, sign(&late)).await.0, 200);
    // A second outcome does not replace the first either.
    let failed = vec![
        ("MessageSid", sid.clone()),
        ("MessageStatus", "failed".to_string()),
        ("ErrorCode", "30008".to_string()),
    ];
    assert_eq!(env.post_form(path, &failed, sign(&failed)).await.0, 200);
    assert_eq!(env.status(req.id).await.as_deref(), Some("Delivered"));
    assert_eq!(env.statuses(req.id).await.len(), 4);

    // Unsigned, wrongly signed, or signed over other fields: 401.
    let forged = vec![
        ("MessageSid", sid.clone()),
        ("MessageStatus", "undelivered".to_string()),
    ];
    assert_eq!(env.post_form(path, &forged, None).await.0, 401);
    let wrong = Some(twilio_signature("wrong", &url, &forged));
    assert_eq!(env.post_form(path, &forged, wrong).await.0, 401);
    assert_eq!(env.post_form(path, &forged, sign(&late)).await.0, 401);
    // Signed but missing both fields: 400 naming each.
    let empty = vec![("AccountSid", "AC1".to_string())];
    let (code, body) = env.post_form(path, &empty, sign(&empty)).await;
    assert_eq!(code, 400);
    let paths: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["MessageSid", "MessageStatus"]);
}

#[tokio::test]
async fn twilio_21610_fails_the_message_and_suppresses_the_number() {
    let mut env = Env::new(Options::default()).await;
    env.gw.mark_opted_out("+254712000005");
    env.start(env.settings(Gateway::Twilio)).await;
    let req = sms("+254712000005", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Failed", 20).await;
    assert_eq!(
        row["failure_reason"],
        "Twilio 21610: Attempt to send to unsubscribed recipient"
    );
    let ev = outbox_of(&env, "suppression.added").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["recipient"], "+254712000005");
    assert_eq!(ev[0]["source"], "twilio-21610");
    // A promotional send to it is now refused by Notify itself.
    let promo = NotificationRequest {
        category: NotificationCategory::Promotional,
        ..sms("+254712000005", "50% off")
    };
    env.request(&promo).await;
    let row = env.wait_status(promo.id, "Failed", 20).await;
    assert!(row["failure_reason"]
        .as_str()
        .unwrap()
        .starts_with("Suppressed"));
    assert_eq!(env.gw.attempts(), 1);
}

#[tokio::test]
async fn africastalking_callbacks_need_the_path_token_and_apply_in_progress_order() {
    let mut env = Env::new(Options {
        // No report from the stand-in within the test: it posts its own.
        report_delay: Duration::from_secs(3600),
        ..Options::default()
    })
    .await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms("+254712000006", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Accepted", 20).await;
    let id = row["provider_message_id"].as_str().unwrap().to_string();
    let path = format!("/api/notify/callbacks/africastalking/{TOKEN}/delivery");
    let report = |s: &str| {
        vec![
            ("id", id.clone()),
            ("status", s.to_string()),
            ("phoneNumber", "+254712000006".to_string()),
        ]
    };
    // Wrong token: 404, nothing applied.
    let (code, _) = env
        .post_form(
            "/api/notify/callbacks/africastalking/guess/delivery",
            &report("Success"),
            None,
        )
        .await;
    assert_eq!(code, 404);
    assert_eq!(env.status(req.id).await.as_deref(), Some("Accepted"));
    // Out of order: Success, then a late Sent, then Success again.
    assert_eq!(env.post_form(&path, &report("Success"), None).await.0, 200);
    assert_eq!(env.post_form(&path, &report("Sent"), None).await.0, 200);
    assert_eq!(env.post_form(&path, &report("Success"), None).await.0, 200);
    assert_eq!(env.status(req.id).await.as_deref(), Some("Delivered"));
    assert_eq!(
        env.statuses(req.id).await,
        ["Queued", "Accepted", "Delivered"]
    );
    // Bad input: every missing field named; an unknown status named.
    let (code, body) = env
        .post_form(&path, &[("networkCode", "63902".to_string())], None)
        .await;
    assert_eq!(code, 400);
    assert_eq!(body["errors"][0]["path"], "id");
    assert_eq!(body["errors"][1]["path"], "status");
    let (code, body) = env.post_form(&path, &report("Teleported"), None).await;
    assert_eq!(code, 400);
    assert_eq!(body["errors"][0]["path"], "status");
}

#[tokio::test]
async fn a_report_that_overtakes_the_record_of_its_send_is_applied_when_that_lands() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let path = format!("/api/notify/callbacks/africastalking/{TOKEN}/delivery");
    // The report for a message id we have not recorded yet.
    let (code, _) = env
        .post_form(
            &path,
            &[
                ("id", "ATXid_early".to_string()),
                ("status", "Success".to_string()),
            ],
            None,
        )
        .await;
    assert_eq!(code, 200);
    let pool = env.pool();
    // Now the worker's record of that send (as if it committed just after).
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO deliveries (id, requester, channel, recipient, body, category, status, attempts) \
         VALUES ($1, 'support', 'sms', '+254712000020', 'Hi', 'transactional', 'Queued', 1)",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    svc_notify::store::lock_message(&mut tx, "africastalking", "ATXid_early")
        .await
        .unwrap();
    svc_notify::store::advance(
        &mut tx,
        id,
        DeliveryStatus::Accepted,
        svc_notify::store::Change {
            provider: Some("africastalking"),
            provider_message_id: Some("ATXid_early"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    svc_notify::store::apply_early_reports(&mut tx, id, "africastalking", "ATXid_early")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(env.status(id).await.as_deref(), Some("Delivered"));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM early_reports")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_undelivered_report_records_the_networks_reason() {
    let mut env = Env::new(Options {
        at_report_status: "Failed".into(),
        ..Options::default()
    })
    .await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let req = sms("+254712000007", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Undelivered", 20).await;
    assert_eq!(row["failure_reason"], "DeliveryFailure");
    let last = env.events(req.id).await.pop().unwrap();
    assert_eq!(last["failureReason"], "DeliveryFailure");
}

#[tokio::test]
async fn opt_out_callback_and_stop_replies_put_numbers_on_the_suppression_list() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let base = format!("/api/notify/callbacks/africastalking/{TOKEN}");
    let optout = format!("{base}/optout");
    let inbound_path = format!("{base}/inbound");
    let (code, _) = env
        .post_form(
            &optout,
            &[
                ("senderId", "ISP".into()),
                ("phoneNumber", "0712000008".into()),
            ],
            None,
        )
        .await;
    assert_eq!(code, 200);
    // The same opt-out again changes nothing.
    env.post_form(
        &optout,
        &[
            ("senderId", "ISP".into()),
            ("phoneNumber", "+254712000008".into()),
        ],
        None,
    )
    .await;
    let inbound = |from: &str, text: &str| {
        vec![
            ("from", from.to_string()),
            ("to", "40404".to_string()),
            ("text", text.to_string()),
            ("id", Uuid::new_v4().to_string()),
            ("date", "2026-12-01 10:00:00".to_string()),
        ]
    };
    let (code, _) = env
        .post_form(&inbound_path, &inbound("+254712000009", "stop"), None)
        .await;
    assert_eq!(code, 200);
    // Not a keyword: acknowledged, ignored (lead texts are wa-parser's).
    let (code, _) = env
        .post_form(
            &inbound_path,
            &inbound("+254712000010", "Jane 0722 Unit 4B"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let (code, body) = env
        .post_form(&optout, &[("senderId", "ISP".into())], None)
        .await;
    assert_eq!(code, 400);
    assert_eq!(body["errors"][0]["path"], "phoneNumber");
    let (code, _) = env
        .post_form(
            "/api/notify/callbacks/africastalking/wrong-token/optout",
            &[("phoneNumber", "+254712000011".into())],
            None,
        )
        .await;
    assert_eq!(code, 404);

    let list: Vec<(String, String)> =
        sqlx::query_as("SELECT recipient, source FROM suppressions ORDER BY recipient")
            .fetch_all(&env.pool())
            .await
            .unwrap();
    assert_eq!(
        list,
        [
            (
                "+254712000008".to_string(),
                "africastalking-optout".to_string()
            ),
            ("+254712000009".to_string(), "inbound-stop".to_string())
        ]
    );
    assert_eq!(outbox_of(&env, "suppression.added").await.len(), 2);

    // Promotional to a suppressed number: refused; transactional still goes.
    let promo = NotificationRequest {
        category: NotificationCategory::Promotional,
        ..sms("+254712000009", "Offer")
    };
    let outage = sms("+254712000009", "Outage in your building");
    env.request(&promo).await;
    env.request(&outage).await;
    env.wait_status(promo.id, "Failed", 20).await;
    env.wait_status(outage.id, "Delivered", 20).await;
    assert_eq!(env.gw.sms().len(), 1);

    // START lifts it and says so.
    let (code, _) = env
        .post_form(&inbound_path, &inbound("+254712000009", "START"), None)
        .await;
    assert_eq!(code, 200);
    let removed = outbox_of(&env, "suppression.removed").await;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["recipient"], "+254712000009");
}

#[tokio::test]
async fn twilio_inbound_stop_is_verified_and_suppresses() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::Twilio)).await;
    let path = "/api/notify/callbacks/twilio/inbound";
    let url = format!("{}{path}", env.base);
    let token = env.gw.options().twilio_auth_token.clone();
    let f = vec![
        ("From", "+254712000012".to_string()),
        ("To", "+15005550006".to_string()),
        ("Body", "STOP".to_string()),
        ("MessageSid", "SMx".to_string()),
    ];
    assert_eq!(env.post_form(path, &f, None).await.0, 401);
    let (code, body) = env
        .post_form(path, &f, Some(twilio_signature(&token, &url, &f)))
        .await;
    assert_eq!(code, 200);
    assert!(body.as_str().unwrap().contains("<Response/>"));
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM suppressions WHERE recipient = '+254712000012'")
            .fetch_one(&env.pool())
            .await
            .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn email_goes_through_smtp_and_a_refused_address_fails_at_once() {
    let mut env = Env::new(Options::default()).await;
    env.gw.refuse_address("gone@example.com");
    env.start(env.settings(Gateway::AfricasTalking)).await;
    let email = |to: &str, subject: Option<&str>, body: &str| NotificationRequest {
        channel: NotificationChannel::Email,
        recipient: to.into(),
        subject: subject.map(String::from),
        ..sms("", body)
    };
    let mail = email(
        "jane@example.com",
        Some("Invoice INV-000001"),
        "Your invoice of KES 2,500.00 is due on 2026-12-05.",
    );
    let gone = email("gone@example.com", None, "Hello");
    let bad = email("not an address", None, "Hello");
    env.request(&mail).await;
    env.request(&gone).await;
    env.request(&bad).await;
    let row = env.wait_status(mail.id, "Sent", 20).await;
    assert_eq!(row["provider"], "smtp");
    let emails = env.gw.emails();
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].to, ["jane@example.com"]);
    assert!(emails[0].data.contains("Subject: Invoice INV-000001"));
    assert!(emails[0]
        .data
        .contains("Your invoice of KES 2,500.00 is due on 2026-12-05."));
    assert!(emails[0]
        .data
        .contains(row["provider_message_id"].as_str().unwrap()));
    let row = env.wait_status(gone.id, "Failed", 20).await;
    assert!(
        row["failure_reason"].as_str().unwrap().contains("550"),
        "{row}"
    );
    assert_eq!(row["attempts"], 1);
    let row = env.wait_status(bad.id, "Failed", 20).await;
    assert!(row["failure_reason"]
        .as_str()
        .unwrap()
        .starts_with("InvalidRecipient"));
}

#[tokio::test]
async fn with_no_gateway_configured_the_log_provider_sends() {
    let mut env = Env::new(Options::default()).await;
    env.start(env.settings(Gateway::Log)).await;
    let req = sms("+254712000013", "Hello");
    env.request(&req).await;
    let row = env.wait_status(req.id, "Sent", 20).await;
    assert_eq!(row["provider"], "log");
    assert_eq!(env.gw.attempts(), 0);
    assert_eq!(env.statuses(req.id).await, ["Queued", "Sent"]);
}

#[tokio::test]
async fn a_send_rate_spaces_the_sends() {
    let mut env = Env::new(Options::default()).await;
    let mut s = env.settings(Gateway::AfricasTalking);
    s.sms_rate_per_second = 5.0;
    let reqs: Vec<_> = (0..6)
        .map(|i| sms(&format!("+2547120001{i:02}"), "Hi"))
        .collect();
    for r in &reqs {
        env.request(r).await;
    }
    env.start(s).await;
    for r in &reqs {
        env.wait_status(r.id, "Delivered", 30).await;
    }
    // Six sends at 5 per second take at least a second from first to last.
    let accepted: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT created_at FROM outbox WHERE type = 'notification.status' \
         AND payload->'data'->>'status' = 'Accepted' ORDER BY created_at",
    )
    .fetch_all(&env.pool())
    .await
    .unwrap();
    assert_eq!(accepted.len(), 6);
    let spread = accepted[5] - accepted[0];
    assert!(
        spread >= chrono::Duration::milliseconds(900),
        "spread {spread}"
    );
}

#[tokio::test]
async fn admin_lists_deliveries_and_nobody_writes_them() {
    let mut env = Env::with_core(Options::default()).await;
    env.start(env.settings(Gateway::AfricasTalking)).await;
    env.gw.mark_invalid("+254712000030");
    let ok = sms("+254712000031", "Hello");
    let bad = sms("+254712000030", "Hello");
    env.request(&ok).await;
    env.request(&bad).await;
    env.wait_status(ok.id, "Delivered", 20).await;
    env.wait_status(bad.id, "Failed", 20).await;
    let admin = env.app.admin_token().await;
    let get = |path: String, token: String| {
        let http = env.app.http.clone();
        let url = format!("{}{path}", env.base);
        async move {
            let r = http
                .get(url)
                .header("authorization", format!("JWT {token}"))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (code, body) = get(
        "/api/notify/deliveries?where[status][equals]=Failed".into(),
        admin.clone(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["totalDocs"], 1);
    let doc = &body["docs"][0];
    assert_eq!(doc["id"], bad.id.to_string());
    assert_eq!(doc["failureReason"], "InvalidPhoneNumber (403)");
    assert_eq!(doc["requester"], "support");
    let (code, doc) = get(format!("/api/notify/deliveries/{}", ok.id), admin.clone()).await;
    assert_eq!(code, 200);
    assert_eq!(doc["status"], "Delivered");
    assert_eq!(doc["cost"], "0.8000");
    assert_eq!(doc["costCurrency"], "KES");
    // Other roles see nothing; nobody creates, edits or deletes a delivery.
    let (agent, _) = env.app.staff_token("Support Agent").await;
    assert_eq!(get("/api/notify/deliveries".into(), agent).await.0, 403);
    let url = format!("{}/api/notify/deliveries/{}", env.base, ok.id);
    let r = env
        .app
        .http
        .patch(&url)
        .header("authorization", format!("JWT {admin}"))
        .json(&serde_json::json!({"status": "Queued"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = env
        .app
        .http
        .delete(&url)
        .header("authorization", format!("JWT {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(env.status(ok.id).await.as_deref(), Some("Delivered"));
}
