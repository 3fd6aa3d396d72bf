//! RFC 5176 Dynamic Authorization: Disconnect-Request and CoA-Request to a NAS.
//!
//! A small hand-rolled packet builder rather than the `radius` crate: we send five
//! attributes, must add Message-Authenticator (HMAC-MD5, which that crate leaves to
//! the caller) and must verify the response authenticator ourselves anyway; the
//! whole wire format is the 60 lines below, unit-tested against RFC 2866/5176's
//! formulas, on the `md-5`/`hmac` crates the workspace already builds.
//!
//! Requests are queued in `dynauth_requests` in the transaction that decides them
//! (a suspension, a plan change) and sent by [`spawn_worker`] after commit, so a
//! rolled-back decision never disconnects anyone and a crash loses no request. Each
//! request is retried (same Identifier and authenticator, as RFC 5176 asks) and the
//! NAS's answer (ACK, NAK with its Error-Cause, or Timeout) is recorded.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sqlx::PgPool;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub const DISCONNECT_REQUEST: u8 = 40;
pub const DISCONNECT_ACK: u8 = 41;
pub const DISCONNECT_NAK: u8 = 42;
pub const COA_REQUEST: u8 = 43;
pub const COA_ACK: u8 = 44;
pub const COA_NAK: u8 = 45;

const USER_NAME: u8 = 1;
const NAS_IP_ADDRESS: u8 = 4;
const VENDOR_SPECIFIC: u8 = 26;
const ACCT_SESSION_ID: u8 = 44;
const MESSAGE_AUTHENTICATOR: u8 = 80;
const ERROR_CAUSE: u8 = 101;
const MIKROTIK_VENDOR: u32 = 14988;
const MIKROTIK_RATE_LIMIT: u8 = 8;

/// What one request says.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub code: u8,
    pub identifier: u8,
    pub username: &'a str,
    pub acct_session_id: &'a str,
    pub nas_ip: Option<IpAddr>,
    /// CoA: the new Mikrotik-Rate-Limit.
    pub rate_limit: Option<&'a str>,
}

fn attr(out: &mut Vec<u8>, t: u8, value: &[u8]) {
    // Values are bounded by the callers (usernames, session ids, rate limits).
    let value = &value[..value.len().min(253)];
    out.push(t);
    out.push((value.len() + 2) as u8);
    out.extend_from_slice(value);
}

/// Encodes the request with Message-Authenticator and the RFC 5176 Request
/// Authenticator (MD5 over the packet with a zero authenticator, then the secret).
pub fn encode(req: &Request<'_>, secret: &[u8]) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr(&mut attrs, USER_NAME, req.username.as_bytes());
    attr(&mut attrs, ACCT_SESSION_ID, req.acct_session_id.as_bytes());
    if let Some(IpAddr::V4(ip)) = req.nas_ip {
        attr(&mut attrs, NAS_IP_ADDRESS, &ip.octets());
    }
    if let Some(rate) = req.rate_limit {
        let mut vsa = MIKROTIK_VENDOR.to_be_bytes().to_vec();
        vsa.push(MIKROTIK_RATE_LIMIT);
        vsa.push((rate.len().min(247) + 2) as u8);
        vsa.extend_from_slice(&rate.as_bytes()[..rate.len().min(247)]);
        attr(&mut attrs, VENDOR_SPECIFIC, &vsa);
    }
    let ma_offset = 20 + attrs.len() + 2;
    attr(&mut attrs, MESSAGE_AUTHENTICATOR, &[0u8; 16]);
    let len = (20 + attrs.len()) as u16;
    let mut pkt = Vec::with_capacity(len as usize);
    pkt.push(req.code);
    pkt.push(req.identifier);
    pkt.extend_from_slice(&len.to_be_bytes());
    pkt.extend_from_slice(&[0u8; 16]);
    pkt.extend_from_slice(&attrs);
    // Message-Authenticator over the packet with it and the authenticator zeroed.
    let mut mac = <Hmac<Md5> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&pkt);
    let ma = mac.finalize().into_bytes();
    pkt[ma_offset..ma_offset + 16].copy_from_slice(&ma);
    let mut md5 = Md5::new();
    md5.update(&pkt);
    md5.update(secret);
    let auth = md5.finalize();
    pkt[4..20].copy_from_slice(&auth);
    pkt
}

/// A verified answer from the NAS.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: u8,
    pub error_cause: Option<u32>,
}

/// The answer codes RFC 5176 allows for a request code: Disconnect-ACK/NAK for a
/// Disconnect-Request, CoA-ACK/NAK for a CoA-Request.
fn answers_to(request_code: u8) -> &'static [u8] {
    match request_code {
        DISCONNECT_REQUEST => &[DISCONNECT_ACK, DISCONNECT_NAK],
        COA_REQUEST => &[COA_ACK, COA_NAK],
        _ => &[],
    }
}

/// Checks length, Identifier, that the code answers the request's code, the
/// Response Authenticator MD5(Code|Id|Length|RequestAuth|Attributes|Secret) and,
/// when the NAS sent one, the Message-Authenticator (RFC 3579 section 3.2:
/// HMAC-MD5 over the response with the Request Authenticator in place of its own
/// and the attribute zeroed). Returns None for anything that is not a genuine
/// answer to `request`.
pub fn verify_response(request: &[u8], response: &[u8], secret: &[u8]) -> Option<Answer> {
    if response.len() < 20 || request.len() < 20 {
        return None;
    }
    let len = u16::from_be_bytes([response[2], response[3]]) as usize;
    if len < 20 || len > response.len() || response[1] != request[1] {
        return None;
    }
    if !answers_to(request[0]).contains(&response[0]) {
        return None;
    }
    let response = &response[..len];
    let mut md5 = Md5::new();
    md5.update(&response[..4]);
    md5.update(&request[4..20]);
    md5.update(&response[20..]);
    md5.update(secret);
    if md5.finalize().as_slice() != &response[4..20] {
        return None;
    }
    let mut error_cause = None;
    let mut message_authenticator = None;
    let mut i = 20;
    while i + 2 <= response.len() {
        let (t, l) = (response[i], response[i + 1] as usize);
        if l < 2 || i + l > response.len() {
            return None;
        }
        match t {
            ERROR_CAUSE if l == 6 => {
                let v = &response[i + 2..i + 6];
                error_cause = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            }
            MESSAGE_AUTHENTICATOR => {
                if l != 18 || message_authenticator.is_some() {
                    return None;
                }
                message_authenticator = Some(i + 2);
            }
            _ => {}
        }
        i += l;
    }
    if let Some(at) = message_authenticator {
        let mut zeroed = response.to_vec();
        zeroed[4..20].copy_from_slice(&request[4..20]);
        zeroed[at..at + 16].fill(0);
        let mut mac =
            <Hmac<Md5> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(&zeroed);
        mac.verify_slice(&response[at..at + 16]).ok()?;
    }
    Some(Answer {
        code: response[0],
        error_cause,
    })
}

/// How an exchange with a NAS ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The verified answer, if one came.
    pub answer: Option<Answer>,
    /// Transmissions made (1 when the first one was answered).
    pub attempts: u32,
    /// Attempts answered by ICMP port unreachable (nothing listening there).
    pub refused: u32,
}

fn refused(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ConnectionRefused
}

/// Sends `packet` up to `attempts` times, waiting `timeout` for a verified answer
/// each time. A refusal (ICMP port unreachable, reported on the connected socket)
/// ends an attempt but not its wait: the next transmission still waits for the
/// attempt's deadline, so a NAS that is restarting gets the whole retry window
/// rather than every retry within a millisecond.
pub async fn exchange(
    nas: SocketAddr,
    packet: &[u8],
    secret: &[u8],
    attempts: u32,
    timeout: Duration,
) -> std::io::Result<Outcome> {
    let bind: SocketAddr = if nas.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(nas).await?;
    let mut buf = [0u8; 4096];
    let mut refusals = 0;
    for attempt in 1..=attempts {
        let deadline = tokio::time::Instant::now() + timeout;
        // An earlier attempt's ICMP error can surface on this send instead of a recv.
        let sent = match sock.send(packet).await {
            Err(e) if refused(&e) => false,
            Err(e) => return Err(e),
            Ok(_) => true,
        };
        loop {
            if !sent {
                refusals += 1;
                tokio::time::sleep_until(deadline).await;
                break;
            }
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break, // timed out: retransmit
                Ok(Err(e)) if refused(&e) => {
                    refusals += 1;
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(n)) => {
                    if let Some(a) = verify_response(packet, &buf[..n], secret) {
                        return Ok(Outcome {
                            answer: Some(a),
                            attempts: attempt,
                            refused: refusals,
                        });
                    }
                    // A forged or stray datagram: keep waiting for the real answer.
                }
            }
        }
    }
    Ok(Outcome {
        answer: None,
        attempts,
        refused: refusals,
    })
}

/// `ISP_NOC_DYNAUTH_TIMEOUT_MS` (default 1000) per attempt and
/// `ISP_NOC_DYNAUTH_ATTEMPTS` (default 3).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub timeout: Duration,
    pub attempts: u32,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            timeout: Duration::from_millis(isp_platform::config::env_parse(
                "ISP_NOC_DYNAUTH_TIMEOUT_MS",
                1000u64,
            )?),
            attempts: isp_platform::config::env_parse("ISP_NOC_DYNAUTH_ATTEMPTS", 3u32)?.max(1),
        })
    }
}

#[derive(sqlx::FromRow)]
struct Pending {
    id: i64,
    kind: String,
    username: String,
    acct_session_id: String,
    nas_ip: String,
    rate_limit: Option<String>,
    nas_secret: Option<String>,
    dynauth_port: Option<i32>,
}

/// Drains `dynauth_requests` in the background until shutdown.
pub fn spawn_worker(pool: PgPool, settings: Settings, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if let Err(e) = drain(&pool, settings).await {
                tracing::warn!(error = %e, "dynauth worker");
            }
        }
    });
}

/// Sends every pending request once (with retries) and records the answers.
/// Rows are locked with SKIP LOCKED, so replicas share the work.
pub async fn drain(pool: &PgPool, settings: Settings) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows: Vec<Pending> = sqlx::query_as(
        "SELECT d.id, d.kind, d.username, d.acct_session_id, d.nas_ip, d.rate_limit,
                r.nas_secret, r.dynauth_port
         FROM dynauth_requests d
         LEFT JOIN LATERAL (
             SELECT nas_secret, dynauth_port FROM resources
             WHERE resource_type = 'Router' AND management_ip = d.nas_ip AND nas_secret IS NOT NULL
             ORDER BY updated_at DESC LIMIT 1
         ) r ON true
         WHERE d.result = 'Pending' ORDER BY d.id LIMIT 32
         FOR UPDATE OF d SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let outcomes =
        futures::future::join_all(rows.into_iter().enumerate().map(|(i, r)| async move {
            let outcome = send_one(&r, i as u8, settings).await;
            (r.id, outcome)
        }))
        .await;
    for (id, (result, cause, detail, attempts)) in outcomes {
        sqlx::query(
            "UPDATE dynauth_requests SET result = $2, error_cause = $3, detail = $4, attempts = $5, sent_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(result)
        .bind(cause.map(|c| c as i32))
        .bind(detail)
        .bind(attempts as i32)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(n)
}

async fn send_one(
    r: &Pending,
    identifier: u8,
    settings: Settings,
) -> (&'static str, Option<u32>, Option<String>, u32) {
    let Ok(ip) = r.nas_ip.parse::<IpAddr>() else {
        return (
            "Error",
            None,
            Some(format!("bad NAS address {}", r.nas_ip)),
            0,
        );
    };
    let Some(secret) = r.nas_secret.as_deref() else {
        return (
            "Error",
            None,
            Some(format!(
                "no Router resource with management IP {ip} and a shared secret"
            )),
            0,
        );
    };
    let code = if r.kind == "CoA" {
        COA_REQUEST
    } else {
        DISCONNECT_REQUEST
    };
    let packet = encode(
        &Request {
            code,
            identifier,
            username: &r.username,
            acct_session_id: &r.acct_session_id,
            nas_ip: Some(ip),
            rate_limit: r.rate_limit.as_deref(),
        },
        secret.as_bytes(),
    );
    let port = r.dynauth_port.unwrap_or(3799) as u16;
    match exchange(
        SocketAddr::new(ip, port),
        &packet,
        secret.as_bytes(),
        settings.attempts,
        settings.timeout,
    )
    .await
    {
        Ok(Outcome {
            answer: Some(a),
            attempts: n,
            ..
        }) => match a.code {
            // verify_response lets through only the ACK/NAK of the request's code.
            DISCONNECT_ACK | COA_ACK => ("ACK", None, None, n),
            _ => ("NAK", a.error_cause, None, n),
        },
        Ok(Outcome {
            answer: None,
            attempts: n,
            refused,
        }) if refused == n => (
            "Error",
            None,
            Some(format!(
                "nothing listens on {ip} port {port}: every attempt was refused (ICMP port unreachable)"
            )),
            n,
        ),
        Ok(Outcome {
            answer: None,
            attempts: n,
            refused,
        }) => (
            "Timeout",
            None,
            (refused > 0).then(|| format!("{refused} of {n} attempts refused (ICMP port unreachable)")),
            n,
        ),
        Err(e) => ("Error", None, Some(e.to_string()), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(parts: &[&[u8]]) -> Vec<u8> {
        let mut h = Md5::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().to_vec()
    }

    #[test]
    fn request_authenticator_and_message_authenticator_follow_rfc_5176() {
        let secret = b"s3cret";
        let pkt = encode(
            &Request {
                code: DISCONNECT_REQUEST,
                identifier: 7,
                username: "ACC-0001",
                acct_session_id: "81000001",
                nas_ip: Some("10.0.0.1".parse().unwrap()),
                rate_limit: Some("5M/10M"),
            },
            secret,
        );
        assert_eq!(pkt[0], 40);
        assert_eq!(pkt[1], 7);
        assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]) as usize, pkt.len());
        let mut zeroed = pkt.clone();
        zeroed[4..20].fill(0);
        assert_eq!(md5(&[&zeroed, secret]), pkt[4..20].to_vec());
        // Message-Authenticator is the last attribute: HMAC over the packet with
        // both it and the authenticator zeroed.
        let ma_at = pkt.len() - 16;
        assert_eq!(pkt[ma_at - 2], MESSAGE_AUTHENTICATOR);
        let mut z = zeroed.clone();
        z[ma_at..].fill(0);
        let mut mac = <Hmac<Md5> as Mac>::new_from_slice(secret).unwrap();
        mac.update(&z);
        assert_eq!(mac.finalize().into_bytes().to_vec(), pkt[ma_at..].to_vec());
    }

    #[test]
    fn response_authenticator_is_verified() {
        let secret = b"s3cret";
        let req = encode(
            &Request {
                code: DISCONNECT_REQUEST,
                identifier: 9,
                username: "u",
                acct_session_id: "s",
                nas_ip: None,
                rate_limit: None,
            },
            secret,
        );
        let mut resp = vec![DISCONNECT_NAK, 9, 0, 26];
        let attrs = [ERROR_CAUSE, 6, 0, 0, 1, 247];
        let auth = md5(&[&resp, &req[4..20], &attrs, secret]);
        resp.extend_from_slice(&auth);
        resp.extend_from_slice(&attrs);
        assert_eq!(
            verify_response(&req, &resp, secret),
            Some(Answer {
                code: DISCONNECT_NAK,
                error_cause: Some(503)
            })
        );
        assert_eq!(verify_response(&req, &resp, b"wrong"), None);
        let mut other_id = resp.clone();
        other_id[1] = 10;
        assert_eq!(verify_response(&req, &other_id, secret), None);
    }

    fn request(secret: &[u8]) -> Vec<u8> {
        encode(
            &Request {
                code: DISCONNECT_REQUEST,
                identifier: 3,
                username: "ACC-1",
                acct_session_id: "s-1",
                nas_ip: Some("127.0.0.1".parse().unwrap()),
                rate_limit: None,
            },
            secret,
        )
    }

    fn answer(req: &[u8], code: u8, attrs: &[u8], secret: &[u8]) -> Vec<u8> {
        let len = (20 + attrs.len()) as u16;
        let mut resp = vec![code, req[1]];
        resp.extend_from_slice(&len.to_be_bytes());
        let auth = md5(&[&resp, &req[4..20], attrs, secret]);
        resp.extend_from_slice(&auth);
        resp.extend_from_slice(attrs);
        resp
    }

    #[tokio::test]
    async fn a_silent_nas_times_out_after_every_retry() {
        let nas = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = nas.local_addr().unwrap();
        let counter = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let mut n = 0;
            while tokio::time::timeout(Duration::from_millis(400), nas.recv_from(&mut buf))
                .await
                .is_ok()
            {
                n += 1;
            }
            n
        });
        let out = exchange(addr, &request(b"k"), b"k", 3, Duration::from_millis(60))
            .await
            .unwrap();
        assert_eq!((out.answer, out.attempts, out.refused), (None, 3, 0));
        assert_eq!(counter.await.unwrap(), 3, "the NAS saw three transmissions");
    }

    #[tokio::test]
    async fn a_forged_answer_is_ignored_and_the_real_nak_is_recorded() {
        let nas = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = nas.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let (n, peer) = nas.recv_from(&mut buf).await.unwrap();
            let req = buf[..n].to_vec();
            nas.send_to(&answer(&req, DISCONNECT_ACK, &[], b"not-the-secret"), peer)
                .await
                .unwrap();
            nas.send_to(
                &answer(&req, DISCONNECT_NAK, &[ERROR_CAUSE, 6, 0, 0, 1, 247], b"k"),
                peer,
            )
            .await
            .unwrap();
        });
        let out = exchange(addr, &request(b"k"), b"k", 3, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(out.attempts, 1);
        assert_eq!(
            out.answer,
            Some(Answer {
                code: DISCONNECT_NAK,
                error_cause: Some(503)
            })
        );
    }

    /// An answer carrying Message-Authenticator, computed as a NAS does (RFC 3579
    /// section 3.2: over the response with the Request Authenticator in its place).
    fn answer_with_ma(req: &[u8], code: u8, secret: &[u8], ma_key: &[u8]) -> Vec<u8> {
        let attrs_len = 18;
        let mut resp = vec![code, req[1]];
        resp.extend_from_slice(&((20 + attrs_len) as u16).to_be_bytes());
        resp.extend_from_slice(&req[4..20]);
        resp.extend_from_slice(&[MESSAGE_AUTHENTICATOR, 18]);
        resp.extend_from_slice(&[0u8; 16]);
        let mut mac = <Hmac<Md5> as Mac>::new_from_slice(ma_key).unwrap();
        mac.update(&resp);
        let ma = mac.finalize().into_bytes();
        resp[22..38].copy_from_slice(&ma);
        let auth = md5(&[&resp[..4], &req[4..20], &resp[20..], secret]);
        resp[4..20].copy_from_slice(&auth);
        resp
    }

    #[test]
    fn only_the_answers_to_the_request_code_are_accepted() {
        let secret = b"k";
        let disconnect = request(secret);
        assert!(verify_response(
            &disconnect,
            &answer(&disconnect, DISCONNECT_ACK, &[], secret),
            secret
        )
        .is_some());
        assert!(verify_response(
            &disconnect,
            &answer(&disconnect, DISCONNECT_NAK, &[], secret),
            secret
        )
        .is_some());
        for wrong in [COA_ACK, COA_NAK, DISCONNECT_REQUEST, 2] {
            assert_eq!(
                verify_response(
                    &disconnect,
                    &answer(&disconnect, wrong, &[], secret),
                    secret
                ),
                None,
                "code {wrong} does not answer a Disconnect-Request"
            );
        }
        let coa = encode(
            &Request {
                code: COA_REQUEST,
                identifier: 4,
                username: "ACC-1",
                acct_session_id: "s-1",
                nas_ip: None,
                rate_limit: Some("1M/2M"),
            },
            secret,
        );
        assert!(verify_response(&coa, &answer(&coa, COA_ACK, &[], secret), secret).is_some());
        assert!(verify_response(&coa, &answer(&coa, COA_NAK, &[], secret), secret).is_some());
        for wrong in [DISCONNECT_ACK, DISCONNECT_NAK] {
            assert_eq!(
                verify_response(&coa, &answer(&coa, wrong, &[], secret), secret),
                None
            );
        }
    }

    #[test]
    fn a_message_authenticator_in_the_answer_is_verified() {
        let secret = b"k";
        let req = request(secret);
        let good = answer_with_ma(&req, DISCONNECT_ACK, secret, secret);
        assert_eq!(
            verify_response(&req, &good, secret),
            Some(Answer {
                code: DISCONNECT_ACK,
                error_cause: None
            })
        );
        // Right Response Authenticator, but an HMAC made with another key.
        let forged = answer_with_ma(&req, DISCONNECT_ACK, secret, b"other");
        assert_eq!(verify_response(&req, &forged, secret), None);
        // A Message-Authenticator of the wrong length is malformed.
        let short = answer(
            &req,
            DISCONNECT_ACK,
            &[MESSAGE_AUTHENTICATOR, 6, 0, 0, 0, 0],
            secret,
        );
        assert_eq!(verify_response(&req, &short, secret), None);
    }

    #[tokio::test]
    async fn a_refusing_port_is_retried_after_each_timeout_not_at_once() {
        // A port nobody listens on: the kernel answers ICMP port unreachable.
        let addr = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let started = std::time::Instant::now();
        let out = exchange(addr, &request(b"k"), b"k", 3, Duration::from_millis(150))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(out.answer, None);
        assert_eq!(out.attempts, 3);
        assert_eq!(out.refused, 3, "{out:?}");
        assert!(
            took >= Duration::from_millis(400),
            "three attempts spread over the timeouts, took {took:?}"
        );
    }
}
