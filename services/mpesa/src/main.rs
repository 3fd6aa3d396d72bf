#[tokio::main]
async fn main() -> anyhow::Result<()> {
    isp_platform::runtime::run_standalone(svc_mpesa::INFO, svc_mpesa::start).await
}
