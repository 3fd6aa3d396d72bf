//! Pins every service's OpenAPI document (`docs/openapi/<service>.json`), so that
//! an API change shows up in review as a change of those files rather than
//! slipping through. After an intended change, refresh them with
//! `ISP_UPDATE_OPENAPI=1 script/test --test openapi_snapshot` and commit the diff.

use std::path::PathBuf;

use isp_testkit::TestApp;
use serde_json::Value;

#[tokio::test]
async fn every_service_serves_the_openapi_document_kept_in_docs() {
    let app = TestApp::spawn(&isp::fleet()).await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi");
    let update = std::env::var("ISP_UPDATE_OPENAPI").is_ok_and(|v| v == "1");
    let mut changed = vec![];
    for (info, _) in isp::fleet() {
        let url = format!("{}/api/{}/openapi.json", app.base, info.name);
        let served: Value = app
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_else(|e| panic!("{url} is not JSON: {e}"));
        let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
        let file = dir.join(format!("{}.json", info.name));
        if update {
            std::fs::write(&file, &text).unwrap();
            continue;
        }
        let kept = std::fs::read_to_string(&file).unwrap_or_default();
        if kept != text {
            changed.push(file.display().to_string());
        }
    }
    assert!(
        changed.is_empty(),
        "the served OpenAPI differs from {changed:?}; if the API change is intended, run \
         `ISP_UPDATE_OPENAPI=1 script/test --test openapi_snapshot` and commit the files"
    );
}
