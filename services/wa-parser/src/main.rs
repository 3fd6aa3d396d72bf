#[tokio::main]
async fn main() -> anyhow::Result<()> {
    isp_platform::runtime::run_standalone(svc_wa_parser::INFO, svc_wa_parser::start).await
}
