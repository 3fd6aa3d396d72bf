#[tokio::main]
async fn main() -> anyhow::Result<()> {
    isp_platform::runtime::run_standalone(svc_core::INFO, svc_core::start).await
}
