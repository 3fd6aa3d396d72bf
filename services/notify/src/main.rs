#[tokio::main]
async fn main() -> anyhow::Result<()> {
    isp_platform::runtime::run_standalone(svc_notify::INFO, svc_notify::start).await
}
