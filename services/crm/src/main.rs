#[tokio::main]
async fn main() -> anyhow::Result<()> {
    isp_platform::runtime::run_standalone(svc_crm::INFO, svc_crm::start).await
}
