//! A private FreeRADIUS process per test, reading a test database's `radius` schema.
//!
//! [`TestFreeRadius::start`] picks two free UDP ports on 127.0.0.1, writes a private
//! configuration with `deploy/freeradius/configure.sh` (the same script
//! `script/server` and the container image use) into a fresh temporary directory,
//! runs `freeradius -f` there (killed when the handle is dropped) and waits until it
//! answers a Status-Server. [`TestFreeRadius::auth`] sends an Access-Request with
//! `radclient`, as a MikroTik router would, and returns the reply code and attributes.
//!
//! Needs the `freeradius`, `freeradius-postgresql` and `freeradius-utils` packages
//! (`script/setup`), permission to read `/etc/freeradius/3.0` (root on Debian), and
//! a database where the NOC migrations have created the `radius` tables and the
//! `isp_radius` role (search_path `radius`) exists. `ISP_TEST_FREERADIUS_BIN` and
//! `ISP_TEST_RADCLIENT_BIN` override the binaries' paths.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// Where FreeRADIUS finds its database, and the shared secret of the 127.0.0.1 client.
#[derive(Clone, Debug)]
pub struct FreeRadiusParams {
    pub db_host: String,
    pub db_port: u16,
    pub db_name: String,
    pub db_user: String,
    pub db_password: String,
    pub secret: String,
}

impl FreeRadiusParams {
    /// The platform's defaults for a test database: role `isp_radius`, password
    /// `isp_radius`, client secret `testing123`.
    pub fn for_database(db_host: &str, db_port: u16, db_name: &str) -> Self {
        Self {
            db_host: db_host.to_string(),
            db_port,
            db_name: db_name.to_string(),
            db_user: "isp_radius".to_string(),
            db_password: "isp_radius".to_string(),
            secret: "testing123".to_string(),
        }
    }
}

/// A reply as `radclient -x` printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RadiusReply {
    /// True for an Access-Accept.
    pub accepted: bool,
    /// Reply attributes in order, values without surrounding quotes, e.g.
    /// `("Mikrotik-Rate-Limit", "5M/10M")`, `("Framed-IP-Address", "10.0.0.5")`.
    pub attributes: Vec<(String, String)>,
    /// The reply code's name: `Access-Accept`, `Access-Reject`, `Accounting-Response`...
    pub code: String,
}

impl RadiusReply {
    /// The first value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running private FreeRADIUS; stopped and its directory removed on drop.
pub struct TestFreeRadius {
    pub auth_port: u16,
    pub acct_port: u16,
    pub secret: String,
    dir: PathBuf,
    log: PathBuf,
    child: Child,
}

impl std::fmt::Debug for TestFreeRadius {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestFreeRadius")
            .field("auth_port", &self.auth_port)
            .field("acct_port", &self.acct_port)
            .field("dir", &self.dir)
            .finish()
    }
}

const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn freeradius_bin() -> String {
    std::env::var("ISP_TEST_FREERADIUS_BIN")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "freeradius".into())
}

fn radclient_bin() -> String {
    std::env::var("ISP_TEST_RADCLIENT_BIN")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "radclient".into())
}

/// `deploy/freeradius/configure.sh` of this repository (found from the crate's
/// source location; `ISP_ROOT` is the fallback when the sources have moved).
fn configure_script() -> PathBuf {
    const SCRIPT: &str = "deploy/freeradius/configure.sh";
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.canonicalize().unwrap_or(root).join(SCRIPT);
    match std::env::var_os("ISP_ROOT") {
        Some(alt) if !script.exists() => Path::new(&alt).join(SCRIPT),
        _ => script,
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> anyhow::Result<u16> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("binding a UDP probe socket")?;
    Ok(sock.local_addr()?.port())
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl TestFreeRadius {
    pub async fn start(params: FreeRadiusParams) -> anyhow::Result<TestFreeRadius> {
        // Readiness and requests go through radclient: fail clearly if it is missing.
        Command::new(radclient_bin())
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .with_context(|| {
                format!(
                    "running {} -v (is freeradius-utils installed?)",
                    radclient_bin()
                )
            })?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&params).await {
                Ok(Ok(server)) => return Ok(server),
                // Another process took one of our ports between probe and bind: new ports.
                Ok(Err(port_taken)) => last_err = Some(port_taken),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("FreeRADIUS did not start")))
    }

    /// Outer error: give up. Inner error: a port was taken, worth another try.
    async fn try_start(
        params: &FreeRadiusParams,
    ) -> anyhow::Result<anyhow::Result<TestFreeRadius>> {
        let auth_port = free_udp_port()?;
        let mut acct_port = free_udp_port()?;
        while acct_port == auth_port {
            acct_port = free_udp_port()?;
        }
        let dir =
            std::env::temp_dir().join(format!("isp-freeradius-{}", uuid::Uuid::new_v4().simple()));
        let raddb = dir.join("raddb");
        std::fs::create_dir_all(&raddb).with_context(|| format!("creating {}", raddb.display()))?;
        // From here on the guard removes `dir` if we fail.
        let guard = DirGuard(Some(dir.clone()));

        let script = configure_script();
        let out = Command::new("bash")
            .arg(&script)
            .arg(&raddb)
            .env("RADIUS_AUTH_PORT", auth_port.to_string())
            .env("RADIUS_ACCT_PORT", acct_port.to_string())
            .env("RADIUS_LISTEN_ADDR", "127.0.0.1")
            .env("RADIUS_CLIENT_SECRET", &params.secret)
            .env("RADIUS_DB_HOST", &params.db_host)
            .env("RADIUS_DB_PORT", params.db_port.to_string())
            .env("RADIUS_DB_NAME", &params.db_name)
            .env("RADIUS_DB_USER", &params.db_user)
            .env("RADIUS_DB_PASSWORD", &params.db_password)
            .env("RADIUS_READ_CLIENTS", "no")
            // Tests want an Access-Reject at once, not after the default 1 s.
            .env("RADIUS_REJECT_DELAY", "0")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}):\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let log = dir.join("freeradius.log");
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new(freeradius_bin())
            .arg("-f")
            .arg("-l")
            .arg("stdout")
            .arg("-d")
            .arg(&raddb)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "spawning {} (is the freeradius package installed?)",
                    freeradius_bin()
                )
            })?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let text = tail(&log, 25);
                if text.contains("Address already in use") {
                    return Ok(Err(anyhow::anyhow!(
                        "FreeRADIUS could not bind its ports:\n{text}"
                    )));
                }
                bail!(
                    "FreeRADIUS exited ({status}) before answering; log {}:\n{text}",
                    log.display()
                );
            }
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Ready to process requests")
                && status_server(auth_port, &params.secret).await
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                bail!(
                    "FreeRADIUS did not answer within {START_TIMEOUT:?}; log {}:\n{}",
                    log.display(),
                    tail(&log, 25)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut guard = guard;
        guard.0 = None;
        tracing::info!(auth_port, acct_port, dir = %dir.display(), "test FreeRADIUS ready");
        Ok(Ok(TestFreeRadius {
            auth_port,
            acct_port,
            secret: params.secret.clone(),
            dir,
            log,
            child,
        }))
    }

    /// Access-Request with User-Name and User-Password (PAP), as a NAS sends it.
    pub async fn auth(&self, user: &str, password: &str) -> anyhow::Result<RadiusReply> {
        self.auth_with(&[("User-Name", user), ("User-Password", password)])
            .await
    }

    /// Access-Request with arbitrary attributes, e.g. adding Calling-Station-Id.
    pub async fn auth_with(&self, attributes: &[(&str, &str)]) -> anyhow::Result<RadiusReply> {
        radclient(self.auth_port, "auth", &self.secret, attributes).await
    }

    /// Accounting-Request (e.g. Acct-Status-Type Start/Stop, Acct-Session-Id,
    /// NAS-IP-Address, User-Name) to the accounting port; rows land in `radacct`.
    pub async fn accounting(&self, attributes: &[(&str, &str)]) -> anyhow::Result<RadiusReply> {
        radclient(self.acct_port, "acct", &self.secret, attributes).await
    }

    /// The server's log so far (useful in a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The private configuration directory (raddb is `dir()/raddb`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestFreeRadius {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes a directory on drop unless disarmed.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A double-quoted radclient value.
fn quote(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    s.push('"');
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

async fn status_server(port: u16, secret: &str) -> bool {
    let child = Command::new(radclient_bin())
        .args(["-q", "-r", "1", "-t", "1"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("status")
        .arg(secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else { return false };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"Message-Authenticator = 0x00\n").await;
    }
    matches!(child.wait().await, Ok(s) if s.success())
}

async fn radclient(
    port: u16,
    command: &str,
    secret: &str,
    attributes: &[(&str, &str)],
) -> anyhow::Result<RadiusReply> {
    let mut child = Command::new(radclient_bin())
        .args(["-x", "-r", "2", "-t", "3"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(command)
        .arg(secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "spawning {} (is freeradius-utils installed?)",
                radclient_bin()
            )
        })?;
    let mut input = String::new();
    for (name, value) in attributes {
        input.push_str(&format!("{name} = {}\n", quote(value)));
    }
    let mut stdin = child.stdin.take().context("radclient stdin")?;
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .context("radclient did not finish within 20 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse_radclient_output(&stdout).with_context(|| {
        format!(
            "no reply from FreeRADIUS on 127.0.0.1:{port} (radclient {}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Parses `radclient -x` output: the `Received <Code> Id ...` line and the
/// tab-indented `Name = Value` lines after it.
fn parse_radclient_output(stdout: &str) -> anyhow::Result<RadiusReply> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("Received "));
    let header = lines.next().context("no 'Received' line")?;
    let code = header
        .split_whitespace()
        .nth(1)
        .context("no reply code")?
        .to_string();
    let mut attributes = Vec::new();
    for line in lines {
        if !line.starts_with(|c: char| c.is_whitespace()) {
            break;
        }
        let Some((name, value)) = line.trim().split_once(" = ") else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"))
            .unwrap_or_else(|| value.to_string());
        attributes.push((name.trim().to_string(), value));
    }
    Ok(RadiusReply {
        accepted: code == "Access-Accept",
        attributes,
        code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_accept_and_reject() {
        let accept = "Sent Access-Request Id 52 from 0.0.0.0:36613 to 127.0.0.1:51912 length 45\n\
\tUser-Name = \"alice\"\n\tUser-Password = \"s3cret\"\n\tCleartext-Password = \"s3cret\"\n\
Received Access-Accept Id 52 from 127.0.0.1:51912 to 127.0.0.1:36613 length 40\n\
\tMikrotik-Rate-Limit = \"5M/10M\"\n\tFramed-IP-Address = 10.20.0.5\n";
        let r = parse_radclient_output(accept).unwrap();
        assert!(r.accepted);
        assert_eq!(r.code, "Access-Accept");
        assert_eq!(r.attr("Mikrotik-Rate-Limit"), Some("5M/10M"));
        assert_eq!(r.attr("Framed-IP-Address"), Some("10.20.0.5"));
        assert_eq!(r.attributes.len(), 2);

        let reject = "Sent Access-Request Id 225 from 0.0.0.0:45792 to 127.0.0.1:51912 length 45\n\
\tUser-Name = \"alice\"\n\
Received Access-Reject Id 225 from 127.0.0.1:51912 to 127.0.0.1:45792 length 20\n\
(0) -: Expected Access-Accept got Access-Reject\n";
        let r = parse_radclient_output(reject).unwrap();
        assert!(!r.accepted);
        assert_eq!(r.code, "Access-Reject");
        assert!(r.attributes.is_empty());

        assert!(parse_radclient_output("(0) No reply from server for ID 1\n").is_err());
    }

    #[test]
    fn quotes_values() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
