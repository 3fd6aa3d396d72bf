//! Buildings named in messages: inferred, matched tolerantly or asked for; learned ids.

use super::*;

#[tokio::test]
async fn buildings_are_inferred_matched_tolerantly_or_asked_for() {
    let w = world().await;
    let p = partner(&w, "0711000004", "Active").await;
    let sunrise = building(&w, &p, "Sunrise Apartments").await;
    building(&w, &p, "Baraka Court").await;
    let me = Sender::phone("254711000004");

    // Two buildings and none named: asked, with the list.
    text(&w, &me, "wamid.b1", "LEAD Jane Wanjiku, 0712345678, B4").await;
    let m = outcome(&w, "wamid.b1", &["Parse error"]).await;
    let reply = &replies_to(&w, "254711000004", 1).await[0];
    assert!(
        reply.text().contains("Sunrise Apartments") && reply.text().contains("Baraka Court"),
        "{}",
        reply.text()
    );
    assert!(m["reason"].as_str().unwrap().contains("No building named"));

    // An unknown building: asked too.
    text(
        &w,
        &me,
        "wamid.b2",
        "LEAD Jane Wanjiku, 0712345678, B4, Kilimani Heights",
    )
    .await;
    outcome(&w, "wamid.b2", &["Parse error"]).await;
    let reply = &replies_to(&w, "254711000004", 2).await[1];
    assert!(
        reply.text().contains("Kilimani Heights") && reply.text().contains("Baraka Court"),
        "{}",
        reply.text()
    );

    // A small typo, other case and spacing: matched.
    text(
        &w,
        &me,
        "wamid.b3",
        "Jina: Jane Wanjiku\nSimu: 0712345678\nNyumba: B4\nJengo:  sunrse   apartments",
    )
    .await;
    let m = outcome(&w, "wamid.b3", &["Lead created"]).await;
    let lead = crm_lead(&w, m["lead"].as_str().unwrap()).await;
    let unit = w
        .app
        .get(
            &format!(
                "/api/crm/buildingUnits/{}",
                lead["serviceLocation"].as_str().unwrap()
            ),
            &w.admin,
        )
        .await;
    assert_eq!(unit.body["building"], json!(sunrise));

    // Bad messages are answered with what was wrong and the format; HELP with the format.
    text(&w, &me, "wamid.b4", "LEAD Jane Wanjiku, 0712, ").await;
    let m = outcome(&w, "wamid.b4", &["Parse error"]).await;
    assert!(m["reason"].as_str().unwrap().contains("\"0712\""), "{m}");
    let reply = &replies_to(&w, "254711000004", 4).await[3];
    assert!(
        reply.text().contains("LEAD Jane Wanjiku, 0712345678, B4"),
        "{}",
        reply.text()
    );
    text(&w, &me, "wamid.b5", "help").await;
    outcome(&w, "wamid.b5", &["Help"]).await;
    let reply = &replies_to(&w, "254711000004", 5).await[4];
    assert!(reply.text().contains("Jina"), "{}", reply.text());
    // A photo: please send text.
    let r = webhook(&w, &wa::image_webhook(PHONE_ID, &me, "wamid.b6")).await;
    assert_eq!(r.status, StatusCode::OK);
    outcome(&w, "wamid.b6", &["Not text"]).await;
    let reply = &replies_to(&w, "254711000004", 6).await[5];
    assert!(reply.text().contains("text message"), "{}", reply.text());
    assert_eq!(crm_leads(&w).await, 1);
}

#[tokio::test]
async fn a_business_scoped_id_is_learned_with_the_number_and_matched_later() {
    let w = world().await;
    let p = partner(&w, "0711000005", "Active").await;
    building(&w, &p, "Sunrise Apartments").await;
    // Only the BSUID, before we know it: unknown.
    text(
        &w,
        &Sender::bsuid("US.1349000000000001"),
        "wamid.u0",
        "LEAD Ann Njeri, 0722000111, 3",
    )
    .await;
    outcome(&w, "wamid.u0", &["Unknown sender"]).await;
    // Both: learned.
    text(
        &w,
        &Sender::both("254711000005", "US.1349000000000001"),
        "wamid.u1",
        "LEAD Jane Wanjiku, 0712345678, 1",
    )
    .await;
    outcome(&w, "wamid.u1", &["Lead created"]).await;
    let learned: i64 = wa_scalar(
        &w,
        "SELECT count(*) FROM partner_bsuids WHERE bsuid = 'US.1349000000000001'",
    )
    .await;
    assert_eq!(learned, 1);
    // Only the BSUID now: the partner; the reply goes to the BSUID.
    text(
        &w,
        &Sender::bsuid("US.1349000000000001"),
        "wamid.u2",
        "LEAD Peter Otieno, 0733000222, 2",
    )
    .await;
    let m = outcome(&w, "wamid.u2", &["Lead created"]).await;
    assert_eq!(m["partner"], json!(p));
    let r = replies_to(&w, "US.1349000000000001", 1).await;
    assert!(r[0].text().contains("Peter Otieno"));
    // Neither: unknown, logged.
    let mut v = wa::text_webhook(
        PHONE_ID,
        &Sender::default(),
        "wamid.u3",
        "LEAD X Y, 0712345678, 1",
    );
    v["entry"][0]["changes"][0]["value"]["contacts"] = json!([]);
    assert_eq!(webhook(&w, &v).await.status, StatusCode::OK);
    let m = outcome(&w, "wamid.u3", &["Unknown sender"]).await;
    assert!(m["reason"].as_str().unwrap().contains("neither"), "{m}");
    assert_eq!(crm_leads(&w).await, 2);
}
