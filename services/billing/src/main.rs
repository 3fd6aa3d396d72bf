#[tokio::main]
async fn main() -> anyhow::Result<()> {
    isp_platform::runtime::run_standalone(svc_billing::INFO, svc_billing::start).await
}
