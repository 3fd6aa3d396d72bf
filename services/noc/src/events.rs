//! `subscriber.network_updated` as NOC publishes it.

use chrono::Utc;
use isp_events::payloads::SubscriberNetworkUpdated;
use sqlx::PgConnection;
use uuid::Uuid;

/// Publishes the subscriber's technical fields as they now stand in `tx`
/// (connection type, assigned address, router) with the time of the change,
/// through the outbox.
pub async fn network_updated(
    tx: &mut PgConnection,
    service: &str,
    subscriber: Uuid,
) -> anyhow::Result<()> {
    let (connection_type, assigned_ip, router): (
        isp_events::options::ConnectionType,
        Option<String>,
        Option<Uuid>,
    ) = sqlx::query_as(
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
        &SubscriberNetworkUpdated {
            subscriber_id: subscriber,
            connection_type,
            assigned_ip,
            router,
            at: Some(Utc::now()),
        },
    )
    .await?;
    Ok(())
}
