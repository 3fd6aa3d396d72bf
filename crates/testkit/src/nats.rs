//! A private `nats-server -js` per test, on a free port, with its own store
//! directory, so tests can stop and restart it (streams survive a restart).
//!
//! The binary is `ISP_TEST_NATS_BIN` if set, else `nats-server` from `PATH`
//! (`script/setup` installs it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// A running (or stopped) private NATS server.
#[derive(Debug)]
pub struct TestNats {
    pub port: u16,
    /// `nats://127.0.0.1:<port>`
    pub url: String,
    dir: PathBuf,
    bin: String,
    child: Option<Child>,
}

impl TestNats {
    /// Starts a JetStream-enabled server on a free port and waits until it accepts
    /// connections.
    pub async fn start() -> anyhow::Result<TestNats> {
        let bin = std::env::var("ISP_TEST_NATS_BIN").unwrap_or_else(|_| "nats-server".to_string());
        let dir =
            std::env::temp_dir().join(format!("isp-test-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("store"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut last_err = None;
        // A port found free can be taken by someone else before the server binds
        // it; try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let mut nats = TestNats {
                port,
                url: format!("nats://127.0.0.1:{port}"),
                dir: dir.clone(),
                bin: bin.clone(),
                child: None,
            };
            match nats.spawn().await {
                Ok(()) => return Ok(nats),
                Err(e) => {
                    // Keep the directory for the next try: forget this handle's
                    // ownership of it by emptying the path before drop.
                    nats.dir = PathBuf::new();
                    last_err = Some(e);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("could not start nats-server")))
    }

    /// The JetStream store directory (kept across [`restart`](Self::restart)).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server and waits for it to exit. Clients see a disconnect.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops (if running) and starts again on the same port with the same store,
    /// so streams, consumers and stored messages survive.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                // The port can linger briefly after the kill.
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "nats-server restart failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))
            .context("opening nats log")?;
        let mut child = Command::new(&self.bin)
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.store_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install nats-server with script/setup or set ISP_TEST_NATS_BIN)",
                    self.bin
                )
            })?;

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "nats-server exited with {status} on port {}: {}",
                    self.port,
                    tail(&self.dir.join("nats.log"))
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                anyhow::bail!(
                    "nats-server did not accept connections on port {} within 10 s",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Let it exit before its store directory is removed under it.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
