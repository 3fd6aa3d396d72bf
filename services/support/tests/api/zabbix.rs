//! Zabbix problems become one network ticket each, and recoveries resolve them.

use super::*;

fn zabbix(event: &str, host: &str, ip: Option<&str>) -> ZabbixEvent {
    ZabbixEvent {
        event_id: event.into(),
        name: "High latency".into(),
        severity: "High".into(),
        host: host.into(),
        host_ip: ip.map(String::from),
        trigger_id: Some("77".into()),
        at: chrono::Utc::now(),
        recovery_of: None,
    }
}

#[tokio::test]
async fn zabbix_problems_become_one_network_ticket_each_and_recoveries_resolve_them() {
    let app = app().await;
    let (token, _) = agent(&app).await;
    // A NOC router at 10.0.0.1 with two active subscribers behind it.
    let router = ResourceSnapshot {
        id: Uuid::now_v7(),
        resource_name: "core-rtr-1".into(),
        resource_type: isp_events::options::ResourceType::Router,
        status: isp_events::options::ResourceStatus::Deployed,
        location: None,
        management_ip: Some("10.0.0.1".into()),
        updated_at: chrono::Utc::now(),
    };
    publish(&app, "noc", &ResourceCreated(router.clone())).await;
    for (i, status) in ["Active", "Active", "Deactivated"].iter().enumerate() {
        let s = SubscriberSnapshot {
            status: isp_events::options::SubscriberStatus::parse(status).unwrap(),
            ..subscriber(Uuid::now_v7(), &format!("+25472200070{i}"))
        };
        // NOC's router may be heard of before Billing's subscriber.
        publish(
            &app,
            "noc",
            &SubscriberNetworkUpdated {
                subscriber_id: s.id,
                connection_type: isp_events::options::ConnectionType::Pppoe,
                assigned_ip: None,
                router: Some(router.id),
                at: Some(chrono::Utc::now()),
            },
        )
        .await;
        known_subscriber(&app, &s).await;
    }
    let problem = zabbix("9001", "core-rtr-1.lan", Some("10.0.0.1"));
    for _ in 0..3 {
        // Escalation steps and redeliveries: separate events, one problem.
        let ev = publish(&app, "noc", &NetworkProblem(problem.clone())).await;
        processed(&app, &ev).await;
    }
    let r = app
        .get("/api/support/tickets?where[kind][equals]=Network", &token)
        .await;
    assert_eq!(r.body["totalDocs"], 1, "{:?}", r.body);
    let t = r.body["docs"][0].clone();
    assert_eq!(t["ticketID"], "NET-9001");
    assert_eq!(t["priority"], "High");
    assert_eq!(t["status"], "Open");
    assert!(t["subscriber"].is_null());
    assert_eq!(t["networkHost"], "core-rtr-1.lan");
    assert_eq!(t["networkSeverity"], "High");
    assert_eq!(t["resource"], router.id.to_string());
    assert_eq!(t["affectedSubscribers"], 2);
    let desc = t["description"].as_str().unwrap();
    assert!(
        desc.contains("Router: core-rtr-1, 2 subscribers behind it"),
        "{desc}"
    );
    assert!(desc.contains("High latency"), "{desc}");

    // An acknowledgement adds a note, never a ticket.
    let ev = publish(
        &app,
        "noc",
        &NetworkProblemUpdated {
            event_id: "9001".into(),
            action: Some("acknowledged".into()),
            message: Some("Looking at it".into()),
            user: Some("Noc Engineer".into()),
            severity: Some("Disaster".into()),
            at: chrono::Utc::now(),
        },
    )
    .await;
    processed(&app, &ev).await;
    let path = format!("/api/support/tickets/{}", t["id"].as_str().unwrap());
    let t = app.get(&path, &token).await.body;
    assert_eq!(t["notes"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(
        t["notes"][0]["text"],
        "Noc Engineer acknowledged in Zabbix: Looking at it"
    );
    assert_eq!(t["networkSeverity"], "Disaster");

    // The recovery resolves it with a note; a second one changes nothing.
    let recovery = ZabbixEvent {
        event_id: "9005".into(),
        recovery_of: Some("9001".into()),
        ..problem.clone()
    };
    for _ in 0..2 {
        let ev = publish(&app, "noc", &NetworkRecovered(recovery.clone())).await;
        processed(&app, &ev).await;
    }
    let t = app.get(&path, &token).await.body;
    assert_eq!(t["status"], "Resolved");
    assert!(t["resolvedAt"].is_string());
    assert_eq!(t["notes"].as_array().unwrap().len(), 2, "{t}");
    assert_eq!(t["notes"][1]["recoveryEventId"], "9005");

    // A recovery that arrives before its problem: the ticket is created resolved.
    let early = ZabbixEvent {
        event_id: "9105".into(),
        recovery_of: Some("9100".into()),
        ..zabbix("9105", "unknown-host", None)
    };
    let ev = publish(&app, "noc", &NetworkRecovered(early)).await;
    processed(&app, &ev).await;
    let ev = publish(
        &app,
        "noc",
        &NetworkProblem(zabbix("9100", "unknown-host", None)),
    )
    .await;
    processed(&app, &ev).await;
    let r = app
        .get(
            "/api/support/tickets?where[ticketID][equals]=NET-9100",
            &token,
        )
        .await;
    let t = &r.body["docs"][0];
    assert_eq!(t["status"], "Resolved", "{t}");
    assert!(t["resource"].is_null());
    assert!(t["affectedSubscribers"].is_null());
    // Tickets went out as events like any other.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM support.outbox WHERE type = 'ticket.created'"
        )
        .await,
        2
    );
}
