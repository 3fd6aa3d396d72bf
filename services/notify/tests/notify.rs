//! Notify against real Postgres and NATS JetStream and the gateway stand-ins
//! (`standins/sms`). Requests arrive the way Support publishes them: through an
//! outbox in another schema, relayed to JetStream.

#[path = "notify/deliveries.rs"]
mod deliveries;
#[path = "notify/reports.rs"]
mod reports;
#[path = "notify/sending.rs"]
mod sending;
#[path = "notify/suppression.rs"]
mod suppression;

use std::sync::Arc;

use isp_events::outbox::enqueue;
use isp_events::payloads::*;
use isp_platform::runtime::{self, Shared};
use isp_platform::ServiceContext;
use isp_standin_sms::{Options, StandIns};
use isp_testkit::{eventually, service, TestApp};
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
        Self::with(TestApp::spawn(&[service!(svc_core)]).await, opts).await
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
            concurrency: 8,
            request_consumers: 4,
            twilio_auth_token: Some(o.twilio_auth_token.clone()),
            twilio_status_url,
            twilio_inbound_url: format!("{}/api/notify/callbacks/twilio/inbound", self.base),
            // Unthrottled, 5 attempts, retries after 100 to 500 ms: the test settings.
            ..Settings::unthrottled(SmsProvider::Log, TOKEN)
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
