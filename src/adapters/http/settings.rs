//! The HTTP server's settings: the `[http]` section (listening address, CORS, connection
//! limits) and the `[admin]` section (the admin publish hook).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct HttpSettings {
    /// Address to listen on.
    pub host: IpAddr,
    /// Port for HTTP and Socket.IO (`SERVER_PORT` in the original). 0 picks a free port.
    pub port: u16,
    /// Origin allowed for Socket.IO polling requests (`FRONTEND_URL`); none means same origin.
    pub cors_origin: Option<String>,
    /// Open connections at most; a connection over it is closed at once.
    pub max_connections: usize,
    /// Open connections at most per client address ([`Self::trusted_proxies`]); 0: no limit.
    pub max_connections_per_client: usize,
    /// Proxies whose `X-Forwarded-For` names the client, for per-client limits: addresses or
    /// networks (`10.0.0.0/8`). Default: loopback and the private ranges.
    pub trusted_proxies: Vec<IpNet>,
    /// Time a client has to send a whole request head (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Largest request head, in bytes (at least 8192); a larger one gets 431.
    pub max_head_bytes: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Default)]
#[serde(default)]
pub struct AdminSettings {
    /// Enables `POST /admin/publish` (embedded mode only): appends a record to the in-process
    /// bus. For tests and benchmarks; never enable it on a reachable port in production.
    pub publish: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            cors_origin: None,
            max_connections: 100_000,
            max_connections_per_client: 1_000,
            trusted_proxies: ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12"]
                .into_iter()
                .chain(["192.168.0.0/16", "fc00::/7"])
                .map(|net| net.parse().expect("a valid network"))
                .collect(),
            header_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
        }
    }
}

impl HttpSettings {
    /// What is wrong with these settings, one line per problem naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_connections == 0 {
            problems.push("http.max_connections: must be at least 1".to_owned());
        }
        if self.max_head_bytes < 8192 {
            problems.push(format!(
                "http.max_head_bytes: must be at least 8192 (hyper's smallest read buffer), got {}",
                self.max_head_bytes
            ));
        }
        if self.header_timeout.is_zero() {
            problems.push("http.header_timeout: must be more than 0".to_owned());
        }
        if let Some(origin) = &self.cors_origin
            && !(origin.starts_with("http://") || origin.starts_with("https://"))
        {
            problems.push(format!(
                "http.cors_origin (FRONTEND_URL): expected an http:// or https:// URL, got {origin:?}"
            ));
        }
        problems
    }
}
