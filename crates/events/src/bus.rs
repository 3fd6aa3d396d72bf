//! Connecting to NATS and declaring the `ISP` stream.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};

/// The one stream every event goes to.
pub const STREAM_NAME: &str = "ISP";
/// What it captures: `isp.<service>.<type>`.
pub const STREAM_SUBJECTS: &str = "isp.>";
/// JetStream drops a re-publish with the same `Nats-Msg-Id` within this window.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Connects to NATS, retrying forever in the background: this returns at once
/// even when the server is down, and the client reconnects on its own after an
/// outage (at most a second apart, so events resume promptly). Publishes and
/// requests made while disconnected fail with a timeout; the relay and consumers
/// treat that as "retry later".
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50u64.saturating_mul(1 << attempts.min(5) as u64))
                .min(Duration::from_secs(1))
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// A NATS client and its JetStream context.
#[derive(Clone, Debug)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

impl Bus {
    /// [`connect_nats`] and wrap; does not wait for the server.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self::from_client(connect_nats(url).await?))
    }

    pub fn from_client(client: async_nats::Client) -> Self {
        let js = jetstream::new(client.clone());
        Self { client, js }
    }

    /// [`ensure_stream`] on this bus.
    pub async fn ensure_stream(&self) -> anyhow::Result<()> {
        ensure_stream(&self.js).await
    }
}

/// The `ISP` stream's configuration: file storage, limits retention with no age
/// or size limit (the stream is the replay log projections are rebuilt from),
/// 2-minute duplicate window.
pub fn stream_config() -> stream::Config {
    stream::Config {
        name: STREAM_NAME.to_string(),
        subjects: vec![STREAM_SUBJECTS.to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::ZERO,
        duplicate_window: DUPLICATE_WINDOW,
        description: Some("All platform events (CloudEvents), isp.<service>.<type>".to_string()),
        ..Default::default()
    }
}

/// Creates the `ISP` stream if it does not exist. An existing stream is left
/// exactly as it is, whatever its configuration (an operator may have tuned it).
pub async fn ensure_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    js.get_or_create_stream(stream_config())
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("ensuring JetStream stream {STREAM_NAME}: {e}"))
}
