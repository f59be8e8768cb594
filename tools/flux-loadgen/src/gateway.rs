//! The gateway under test: spawned in embedded benchmark mode (or in Kafka mode against a
//! given broker) or attached by pid, and a tiny keep-alive HTTP/1.1 client for its health
//! check and its `POST /admin/publish` hook.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::kafka::KafkaProcess;
use crate::process::{die_with_parent, free_port};

/// The gateway process being measured.
pub struct Gateway {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    /// Kafka mode: the bootstrap address events are produced to (instead of the admin hook).
    pub kafka: Option<String>,
    /// Present when this tool spawned the gateway; killed on drop.
    child: Option<Child>,
    /// A broker this tool started for the run; stopped after the gateway.
    broker: Option<KafkaProcess>,
}

impl Gateway {
    /// Attaches to a running gateway at `addr` (its pid, if given, is sampled from /proc).
    pub fn attach(addr: SocketAddr, pid: Option<u32>) -> Self {
        Self {
            addr,
            pid,
            kafka: None,
            child: None,
            broker: None,
        }
    }

    /// Events go to `bootstrap` through Kafka; `broker` (if this tool started it) lives as
    /// long as the gateway.
    pub fn with_kafka(mut self, bootstrap: String, broker: Option<KafkaProcess>) -> Self {
        self.kafka = Some(bootstrap);
        self.broker = broker;
        self
    }

    /// Spawns `binary` in embedded mode on a free loopback port with the admin publish hook
    /// on and the simulator off, then waits for `/healthz`. With `kafka` (a bootstrap
    /// address) it runs in Kafka mode instead (Valkey off, in-process cache) and the wait is
    /// for `/readyz` (consumers subscribed). `extra_env` (KEY=VALUE) is applied last. The
    /// gateway's own output goes to `log` (or is discarded).
    pub async fn spawn(
        binary: &Path,
        kafka: Option<&str>,
        extra_env: &[String],
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let port = free_port().context("no free loopback port for the gateway")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(binary);
        cmd.env("FLUX_HTTP__HOST", "127.0.0.1")
            .env("FLUX_HTTP__PORT", port.to_string())
            .env("FLUX_ADMIN__PUBLISH", "true")
            .env("FLUX_SIM__ENABLED", "false")
            // Every client of this tool comes from 127.0.0.1: no per-address connection limit
            // (--gateway-env FLUX_HTTP__MAX_CONNECTIONS_PER_CLIENT=N puts one back).
            .env("FLUX_HTTP__MAX_CONNECTIONS_PER_CLIENT", "0")
            .env_remove("KAFKA_BROKER_ADDRESS")
            .env_remove("FLUX_KAFKA__BROKERS")
            .env(
                "RUST_LOG",
                std::env::var("LG_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(bootstrap) = kafka {
            cmd.env("FLUX_KAFKA__BROKERS", format!("[\"{bootstrap}\"]"))
                .env("FLUX_VALKEY__ENABLED", "false");
        }
        for kv in extra_env {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--gateway-env expects KEY=VALUE, got {kv:?}");
            };
            cmd.env(k, v);
        }
        match log {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("cannot create gateway log {}", path.display()))?;
                cmd.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "cannot start the gateway {} (build it with `cargo build --release`)",
                binary.display()
            )
        })?;
        let pid = child.id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Kafka mode: ready means the consumers are subscribed (at the latest offsets), so
        // nothing produced after this point is missed.
        let probe = if kafka.is_some() {
            "/readyz"
        } else {
            "/healthz"
        };
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the gateway exited during start-up with {status}; rerun with --gateway-log FILE to see why"
                );
            }
            if let Ok(200) = http_status(addr, "GET", probe, b"").await {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the gateway did not answer {probe} with 200 on {addr} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            addr,
            pid,
            kafka: kafka.map(str::to_owned),
            child: Some(child),
            broker: None,
        })
    }

    /// The pid of the broker this tool started, if any.
    pub fn broker_pid(&self) -> Option<u32> {
        self.broker.as_ref().and_then(|t| t.pid)
    }

    /// Stops a spawned gateway (SIGKILL; its shutdown path is not what is measured here).
    pub async fn stop(mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill().await;
        }
        // The broker (if ours) goes when `self` is dropped, after the gateway.
    }
}

/// One request on a fresh connection; returns the status code.
pub async fn http_status(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<u16> {
    let mut c = HttpClient::connect(addr).await?;
    let (status, _) = c.request(method, path, body).await?;
    Ok(status)
}

/// Longest wait for one HTTP answer from the gateway.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive HTTP/1.1 client for small requests (`Content-Length` responses only).
pub struct HttpClient {
    addr: SocketAddr,
    io: Option<TcpStream>,
    buf: Vec<u8>,
    head: Vec<u8>,
}

impl HttpClient {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut c = Self {
            addr,
            io: None,
            buf: Vec::with_capacity(4096),
            head: Vec::with_capacity(256),
        };
        c.reconnect().await?;
        Ok(c)
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        let io = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {} timed out", self.addr))?
            .with_context(|| format!("cannot reach the gateway at {}", self.addr))?;
        io.set_nodelay(true)?;
        self.io = Some(io);
        Ok(())
    }

    /// Sends one request and returns (status, body). Reconnects once if the kept-alive
    /// connection was closed by the server. Each attempt is bounded by `REQUEST_TIMEOUT`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let first =
            tokio::time::timeout(REQUEST_TIMEOUT, self.try_request(method, path, body)).await;
        match first {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => {
                self.reconnect().await?;
                tokio::time::timeout(REQUEST_TIMEOUT, self.try_request(method, path, body))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "{method} {path}: no answer from the gateway within {REQUEST_TIMEOUT:?}"
                        )
                    })?
            }
            Err(_) => {
                self.io = None;
                bail!("{method} {path}: no answer from the gateway within {REQUEST_TIMEOUT:?}")
            }
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let io = self.io.as_mut().context("not connected")?;
        self.head.clear();
        self.head.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.addr,
                body.len()
            )
            .as_bytes(),
        );
        io.write_all(&self.head).await?;
        io.write_all(body).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                bail!("the gateway closed the HTTP connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > 64 * 1024 {
                bail!("HTTP response headers too large");
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..header_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("malformed HTTP status line")?;
        let len = parse_content_length(&head).unwrap_or(0);
        while self.buf.len() < header_end + len {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                bail!("the gateway closed the HTTP connection mid-body");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[header_end..header_end + len].to_vec();
        if head.contains("connection: close") {
            self.io = None;
        }
        Ok((status, body))
    }
}

/// The `Content-Length` header value of a response head.
pub fn parse_content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

/// Publishes records through `POST /admin/publish` (embedded bus), one request per batch.
pub struct Publisher {
    http: HttpClient,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            http: HttpClient::connect(addr).await?,
        })
    }

    /// Publishes newline-separated records (`format=ndjson`) under one key.
    pub async fn publish_ndjson(
        &mut self,
        topic: &str,
        key: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let path = format!("/admin/publish?topic={topic}&key={key}&format=ndjson");
        self.check(&path, body).await
    }

    /// Publishes one record value.
    pub async fn publish_one(
        &mut self,
        topic: &str,
        key: Option<&str>,
        value: &[u8],
    ) -> anyhow::Result<()> {
        let path = match key {
            Some(k) => format!("/admin/publish?topic={topic}&key={k}"),
            None => format!("/admin/publish?topic={topic}"),
        };
        self.check(&path, value).await
    }

    async fn check(&mut self, path: &str, body: &[u8]) -> anyhow::Result<()> {
        let (status, resp) = self.http.request("POST", path, body).await?;
        match status {
            200..=299 => Ok(()),
            404 | 405 => bail!(
                "POST {path} answered {status}: the admin publish hook is off; start the gateway in embedded mode with FLUX_ADMIN__PUBLISH=true"
            ),
            _ => bail!(
                "POST {path} answered {status}: {}",
                String::from_utf8_lossy(&resp)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_found_case_insensitively() {
        assert_eq!(
            parse_content_length("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n"),
            Some(12)
        );
        assert_eq!(
            parse_content_length("HTTP/1.1 200 OK\r\nContent-Length:3\r\n"),
            Some(3)
        );
        assert_eq!(
            parse_content_length("HTTP/1.1 204 No Content\r\n\r\n"),
            None
        );
    }

    #[tokio::test]
    async fn the_keep_alive_client_reads_status_and_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for reply in [
                "HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok",
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            ] {
                let mut got = Vec::new();
                let mut b = [0u8; 1024];
                // Read headers plus the 3-byte body.
                while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"abc")) {
                    let n = s.read(&mut b).await.unwrap();
                    got.extend_from_slice(&b[..n]);
                }
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let mut p = Publisher::connect(addr).await.unwrap();
        p.publish_one("t", Some("k"), b"abc").await.unwrap();
        let err = p.publish_ndjson("t", "k", b"abc").await.unwrap_err();
        assert!(
            err.to_string().contains("FLUX_ADMIN__PUBLISH=true"),
            "{err}"
        );
    }
}
