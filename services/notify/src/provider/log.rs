//! The default when no gateway is configured: the message is written to the log
//! and counts as sent, so the whole flow works on one machine with no accounts.

use async_trait::async_trait;
use isp_events::payloads::DeliveryStatus;

use super::{Outcome, Outgoing, Provider};

pub struct LogProvider;

#[async_trait]
impl Provider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn send(&self, msg: &Outgoing) -> Outcome {
        tracing::info!(
            delivery = %msg.id,
            channel = msg.channel.as_str(),
            recipient = %msg.recipient,
            subject = msg.subject.as_deref().unwrap_or(""),
            body = %msg.body,
            "log-only provider: message not sent to any gateway"
        );
        Outcome::Accepted {
            status: DeliveryStatus::Sent,
            provider_message_id: Some(format!("log-{}", msg.id)),
            cost: None,
            cost_currency: None,
        }
    }
}
