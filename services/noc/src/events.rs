//! `subscriber.network_updated` as NOC publishes it.

use chrono::{DateTime, Utc};
use isp_events::payloads::{EventPayload, SubscriberNetworkUpdated};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

/// The shared `SubscriberNetworkUpdated` payload plus `at`, when the change was
/// made, so consumers can put updates in order (an older one may arrive late).
///
/// `at` travels in the event's data but is not a field of the shared struct yet:
/// adding a field there breaks every crate that builds the struct literally
/// (Billing's tests do), which is outside NOC. Once they set it, `at` moves into
/// `isp_events::payloads::SubscriberNetworkUpdated` as
/// `#[serde(default)] at: Option<DateTime<Utc>>`, with the same wire form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkUpdated {
    #[serde(flatten)]
    pub update: SubscriberNetworkUpdated,
    pub at: DateTime<Utc>,
}

impl EventPayload for NetworkUpdated {
    const TYPE: &'static str = SubscriberNetworkUpdated::TYPE;
    const SERVICE: &'static str = SubscriberNetworkUpdated::SERVICE;
    fn subject_id(&self) -> String {
        self.update.subject_id()
    }
}

/// Publishes the subscriber's technical fields as they now stand in `tx`
/// (connection type, assigned address, router), through the outbox.
pub async fn network_updated(
    tx: &mut PgConnection,
    service: &str,
    subscriber: Uuid,
) -> anyhow::Result<()> {
    let (connection_type, assigned_ip, router): (String, Option<String>, Option<Uuid>) =
        sqlx::query_as(
            "SELECT s.connection_type, a.ip_address, s.router
             FROM subscribers s LEFT JOIN ip_addresses a ON a.id = s.assigned_ip
             WHERE s.id = $1",
        )
        .bind(subscriber)
        .fetch_one(&mut *tx)
        .await?;
    isp_events::outbox::enqueue(
        tx,
        service,
        &NetworkUpdated {
            update: SubscriberNetworkUpdated {
                subscriber_id: subscriber,
                connection_type,
                assigned_ip,
                router,
            },
            at: Utc::now(),
        },
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_payload_reads_it_and_at_is_on_the_wire() {
        let ev = NetworkUpdated {
            update: SubscriberNetworkUpdated {
                subscriber_id: Uuid::now_v7(),
                connection_type: "Static IP".into(),
                assigned_ip: None,
                router: None,
            },
            at: Utc::now(),
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert!(json["at"].is_string());
        assert!(json["assignedIp"].is_null());
        let shared: SubscriberNetworkUpdated = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(shared, ev.update);
        assert_eq!(serde_json::from_value::<NetworkUpdated>(json).unwrap(), ev);
    }
}
