//! `ValkeySettings`: the `[valkey]` configuration section, its validation, and how it turns
//! into a redis connection description. No I/O except reading the password file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

/// Connection to the Valkey (Redis-compatible) snapshot cache: section `[valkey]` of
/// `flux.toml`, or `FLUX_VALKEY__<FIELD>` environment variables.
///
/// The cache is an accelerator, never a dependency (D16): an unreachable server or a wrong
/// password does not stop the gateway, it runs degraded and reconnects in the background.
/// Only an invalid configuration (see [`ValkeySettings::validate`]) or an unreadable password
/// file is an error at start-up.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct ValkeySettings {
    /// Server URL, `redis://host:port[/db]` or `rediss://host:port[/db]` (TLS, verified
    /// against the system's root certificates; `rediss://host:port/#insecure` skips the check,
    /// for self-signed test servers only). Credentials may be given in the URL
    /// (`redis://user:secret@host:6379`), but `username` / `password` below win.
    /// Default `redis://127.0.0.1:6379`. Env: `FLUX_VALKEY__URL` (the original `VALKEY_HOST`
    /// and `VALKEY_PORT` build `redis://HOST:PORT`).
    pub url: String,
    /// ACL user name (Valkey/Redis 6+). Needs a password. Default none (the `default` user).
    /// Env: `FLUX_VALKEY__USERNAME`.
    pub username: Option<String>,
    /// Password (`AUTH`). Wins over `password_file` when both are set; an empty string counts
    /// as unset. Default none. Env: `FLUX_VALKEY__PASSWORD` or the original `VALKEY_PASSWORD`.
    pub password: Option<String>,
    /// File holding the password (for mounted secrets); its content is trimmed. Used only
    /// when `password` is unset. A missing, unreadable or empty file is a start-up error.
    /// Default none. Env: `FLUX_VALKEY__PASSWORD_FILE` or the original `VALKEY_PASSWORD_FILE`.
    pub password_file: Option<PathBuf>,
    /// Logical database number (`SELECT`). When 0 (the default), a database named in the URL
    /// path (`redis://host:6379/2`) is used instead. Env: `FLUX_VALKEY__DATABASE`.
    pub database: i64,
    /// Prepended to every key, so `crypto:top-movers` is stored as `bff:crypto:top-movers`.
    /// May be empty. Default `bff:`. Env: `FLUX_VALKEY__KEY_PREFIX`.
    pub key_prefix: String,
    /// Maximum number of pooled connections. Each one is multiplexed and shared by the calls,
    /// so this bounds connections, not concurrent calls. 1 to 1024, default 16.
    /// Env: `FLUX_VALKEY__POOL_SIZE`.
    pub pool_size: u32,
    /// Upper bound of every cache call, connecting included (a human duration: `250ms`,
    /// `1s`). A call that takes longer fails, and the cache then counts as down until a
    /// background probe reaches it again. 1 ms to 60 s, default `250ms`.
    /// Env: `FLUX_VALKEY__TIMEOUT`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Whether to use Valkey at all. When false the gateway does not connect and keeps
    /// snapshots and dedup windows in process memory. Default true.
    /// Env: `FLUX_VALKEY__ENABLED`.
    pub enabled: bool,
}

impl Default for ValkeySettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            username: None,
            password: None,
            password_file: None,
            database: 0,
            key_prefix: "bff:".into(),
            pool_size: 16,
            timeout: Duration::from_millis(250),
            enabled: true,
        }
    }
}

impl ValkeySettings {
    pub const MAX_POOL_SIZE: u32 = 1024;
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

    /// `redis://host:port` for the original `VALKEY_HOST` / `VALKEY_PORT` variables.
    ///
    /// # Errors
    /// `host` is not a host name nor an IP address: it holds a port (`valkey:6379`), a
    /// URL or a path. The original took `VALKEY_HOST` as a host name only, so that is refused
    /// naming the variable, rather than turned into a URL whose error blames `valkey.url`.
    pub fn url_for(host: &str, port: u16) -> Result<String, String> {
        let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if let Ok(ip) = bracketed.unwrap_or(host).parse::<std::net::Ipv6Addr>() {
            return Ok(format!("redis://[{ip}]:{port}"));
        }
        if host.is_empty()
            || host.contains(|c: char| {
                matches!(c, ':' | '/' | '@' | '?' | '#' | '[' | ']') || c.is_whitespace()
            })
        {
            return Err(format!(
                "VALKEY_HOST: expected a host name or an IP address, got {:?}; put the port in VALKEY_PORT, or a whole redis:// URL in FLUX_VALKEY__URL",
                redact_url(host)
            ));
        }
        Ok(format!("redis://{host}:{port}"))
    }

    /// Checks every field without touching the network or the file system.
    ///
    /// # Errors
    /// A message naming the field (`valkey.<field>`), what is wrong and what is expected.
    pub fn validate(&self) -> Result<(), String> {
        let url = self.url.trim();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(format!(
                "valkey.url: expected redis://host:port or rediss://host:port, got {:?}",
                redact_url(url)
            ));
        }
        let info = url.into_connection_info().map_err(|e| {
            format!(
                "valkey.url: {:?} is not a valid Valkey URL: {e}",
                redact_url(url)
            )
        })?;
        match info.addr() {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. }
                if host.is_empty() =>
            {
                return Err(format!("valkey.url: {:?} names no host", redact_url(url)));
            }
            _ => {}
        }
        if self.database < 0 {
            return Err(format!(
                "valkey.database: expected 0 or more, got {}",
                self.database
            ));
        }
        if self.username.as_deref().is_some_and(str::is_empty) {
            return Err("valkey.username: is empty; remove it to use the default user".into());
        }
        if self.username.is_some()
            && non_empty(self.password.as_deref()).is_none()
            && self.password_file.is_none()
            && info.redis_settings().password().is_none()
        {
            return Err(
                "valkey.username: is set but no password is; set valkey.password or valkey.password_file"
                    .into(),
            );
        }
        if self
            .password_file
            .as_deref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("valkey.password_file: is empty; give a file path or remove it".into());
        }
        if self.pool_size == 0 || self.pool_size > Self::MAX_POOL_SIZE {
            return Err(format!(
                "valkey.pool_size: expected 1 to {}, got {}",
                Self::MAX_POOL_SIZE,
                self.pool_size
            ));
        }
        if self.timeout < Duration::from_millis(1) || self.timeout > Self::MAX_TIMEOUT {
            return Err(format!(
                "valkey.timeout: expected 1ms to 60s, got {:?}",
                self.timeout
            ));
        }
        Ok(())
    }

    /// The password to send: `password` if set (and not empty), else the trimmed content of
    /// `password_file`, else none.
    ///
    /// # Errors
    /// The password file cannot be read, is not UTF-8, or is empty after trimming.
    pub fn resolve_password(&self) -> anyhow::Result<Option<String>> {
        if let Some(password) = non_empty(self.password.as_deref()) {
            return Ok(Some(password.to_owned()));
        }
        match &self.password_file {
            Some(path) => read_password_file(path).map(Some),
            None => Ok(None),
        }
    }

    /// `host:port` of the configured server, for error messages (never the credentials).
    pub fn server(&self) -> String {
        self.url.trim().into_connection_info().map_or_else(
            |_| "the configured server".to_owned(),
            |info| describe_addr(info.addr()),
        )
    }

    /// Validates, reads the password file and builds the redis connection description.
    ///
    /// # Errors
    /// As for [`ValkeySettings::validate`] and [`ValkeySettings::resolve_password`].
    pub(crate) fn connection_info(&self) -> anyhow::Result<ConnectionInfo> {
        self.validate().map_err(anyhow::Error::msg)?;
        let info = self
            .url
            .trim()
            .into_connection_info()
            .context("valkey.url: cannot be parsed")?;
        let mut redis = info.redis_settings().clone();
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = self.resolve_password()? {
            redis = redis.set_password(password);
        }
        if self.database != 0 {
            redis = redis.set_db(self.database);
        }
        Ok(info.set_redis_settings(redis))
    }
}

/// `host:port` of the server, for logs and error messages (never the credentials).
pub(crate) fn describe_addr(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "the configured server".into(),
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let content = std::fs::read_to_string(path).with_context(|| {
        format!(
            "valkey.password_file: cannot read {} (check VALKEY_PASSWORD_FILE / FLUX_VALKEY__PASSWORD_FILE and the file's permissions)",
            path.display()
        )
    })?;
    let password = content.trim();
    if password.is_empty() {
        anyhow::bail!(
            "valkey.password_file: {} is empty; write the password into it or unset VALKEY_PASSWORD_FILE / FLUX_VALKEY__PASSWORD_FILE",
            path.display()
        );
    }
    Ok(password.to_owned())
}

/// The URL with any password replaced by `***`, safe to print.
///
/// The credentials end at the last `@` of the whole text, not at the first `/`: a password
/// may hold `/` (base64 does) or `@`, and a URL the parser refuses is exactly the one printed
/// in the error. Where the host really ends is not known then, so more may be hidden than the
/// password (an `@` in the path), never less.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let scheme = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    format!("{scheme}{user}:***{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ValkeySettings {
        ValkeySettings::default()
    }

    fn temp_file(content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "flux-valkey-password-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::write(&path, content).expect("temp dir is writable");
        path
    }

    #[test]
    fn defaults_are_valid_and_match_the_decisions() {
        let s = valid();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.url, "redis://127.0.0.1:6379");
        assert_eq!(s.key_prefix, "bff:");
        assert_eq!(s.pool_size, 16);
        assert_eq!(s.timeout, Duration::from_millis(250));
        assert!(s.enabled);
    }

    #[test]
    fn redis_and_rediss_urls_are_accepted() {
        for url in [
            "redis://localhost:6379",
            "redis://valkey",
            "rediss://cache.example.com:6380/2",
            "redis://user:pw@10.0.0.1:6379/0",
        ] {
            let s = ValkeySettings {
                url: url.into(),
                ..valid()
            };
            assert_eq!(s.validate(), Ok(()), "{url}");
        }
    }

    #[test]
    fn other_schemes_are_rejected_naming_the_field() {
        for url in [
            "http://localhost:6379",
            "localhost:6379",
            "unix:///tmp/redis.sock",
            "",
        ] {
            let s = ValkeySettings {
                url: url.into(),
                ..valid()
            };
            let err = s.validate().unwrap_err();
            assert!(
                err.starts_with("valkey.url: expected redis://"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn a_password_in_a_rejected_url_is_not_echoed() {
        let s = ValkeySettings {
            url: "http://u:topsecret@host:1".into(),
            ..valid()
        };
        let err = s.validate().unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
        assert!(err.contains("u:***@host:1"), "{err}");
    }

    /// Found by review: the redaction stopped at the first `/`, so a base64 password (which
    /// may hold `/`) was printed whole, and such a URL fails to parse (its port is taken from
    /// the password), which is exactly when the exit-2 error prints it.
    #[test]
    fn a_password_holding_a_slash_or_an_at_is_not_echoed() {
        for (url, shown) in [
            ("redis://u:pa/ss@h:6379", "redis://u:***@h:6379"),
            ("redis://u:p@a/ss@h:6379/2", "redis://u:***@h:6379/2"),
            ("rediss://:pa/ss@h:6380", "rediss://:***@h:6380"),
            ("u:pa/ss@h:6379", "u:***@h:6379"),
        ] {
            let s = ValkeySettings {
                url: url.into(),
                ..valid()
            };
            let err = s.validate().unwrap_err();
            assert!(
                !err.contains("pa/ss") && !err.contains("ss@"),
                "{url}: {err}"
            );
            assert!(err.contains(shown), "{url}: {err}");
        }
    }

    #[test]
    fn a_malformed_url_is_rejected() {
        let s = ValkeySettings {
            url: "redis://host:notaport".into(),
            ..valid()
        };
        let err = s.validate().unwrap_err();
        assert!(err.starts_with("valkey.url: "), "{err}");
    }

    #[test]
    fn out_of_range_numbers_are_rejected_naming_the_field() {
        let cases = [
            (
                ValkeySettings {
                    pool_size: 0,
                    ..valid()
                },
                "valkey.pool_size:",
            ),
            (
                ValkeySettings {
                    pool_size: 5000,
                    ..valid()
                },
                "valkey.pool_size:",
            ),
            (
                ValkeySettings {
                    timeout: Duration::ZERO,
                    ..valid()
                },
                "valkey.timeout:",
            ),
            (
                ValkeySettings {
                    timeout: Duration::from_secs(61),
                    ..valid()
                },
                "valkey.timeout:",
            ),
            (
                ValkeySettings {
                    database: -1,
                    ..valid()
                },
                "valkey.database:",
            ),
        ];
        for (settings, field) in cases {
            let err = settings.validate().unwrap_err();
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn a_username_without_a_password_is_rejected() {
        let s = ValkeySettings {
            username: Some("bff".into()),
            ..valid()
        };
        assert!(s.validate().unwrap_err().starts_with("valkey.username:"));
        let s = ValkeySettings {
            username: Some("bff".into()),
            password: Some("pw".into()),
            ..valid()
        };
        assert_eq!(s.validate(), Ok(()));
        let s = ValkeySettings {
            username: Some("bff".into()),
            url: "redis://:pw@h:6379".into(),
            ..valid()
        };
        assert_eq!(s.validate(), Ok(()), "a password in the URL counts");
    }

    #[test]
    fn the_password_file_content_is_trimmed() {
        let path = temp_file("  s3cret \n");
        let s = ValkeySettings {
            password_file: Some(path.clone()),
            ..valid()
        };
        let password = s.resolve_password().unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(password.as_deref(), Some("s3cret"));
    }

    #[test]
    fn the_password_wins_over_the_password_file() {
        let path = temp_file("from-file\n");
        let s = ValkeySettings {
            password: Some("from-env".into()),
            password_file: Some(path.clone()),
            ..valid()
        };
        let password = s.resolve_password().unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(password.as_deref(), Some("from-env"));
    }

    #[test]
    fn an_empty_password_counts_as_unset() {
        let path = temp_file("from-file");
        let s = ValkeySettings {
            password: Some(String::new()),
            password_file: Some(path.clone()),
            ..valid()
        };
        let password = s.resolve_password().unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(password.as_deref(), Some("from-file"));
        assert_eq!(ValkeySettings::default().resolve_password().unwrap(), None);
    }

    #[test]
    fn a_missing_or_empty_password_file_is_an_error_naming_the_field() {
        let missing = std::env::temp_dir().join("flux-valkey-no-such-password-file");
        let s = ValkeySettings {
            password_file: Some(missing),
            ..valid()
        };
        let err = format!("{:#}", s.resolve_password().unwrap_err());
        assert!(
            err.starts_with("valkey.password_file: cannot read"),
            "{err}"
        );

        let path = temp_file(" \n\t");
        let s = ValkeySettings {
            password_file: Some(path.clone()),
            ..valid()
        };
        let err = format!("{:#}", s.resolve_password().unwrap_err());
        std::fs::remove_file(&path).ok();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn settings_override_credentials_and_database_from_the_url() {
        let s = ValkeySettings {
            url: "redis://urluser:urlpw@h:1/3".into(),
            password: Some("pw".into()),
            ..valid()
        };
        let info = s.connection_info().unwrap();
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().username(), Some("urluser"));
        assert_eq!(info.redis_settings().db(), 3, "database 0 keeps the URL's");

        let s = ValkeySettings { database: 5, ..s };
        assert_eq!(s.connection_info().unwrap().redis_settings().db(), 5);
        assert_eq!(describe_addr(s.connection_info().unwrap().addr()), "h:1");
    }

    #[test]
    fn a_human_timeout_deserializes() {
        let s: ValkeySettings =
            serde_json::from_str(r#"{"timeout":"1s 500ms","key_prefix":"x:"}"#).unwrap();
        assert_eq!(s.timeout, Duration::from_millis(1500));
        assert_eq!(s.key_prefix, "x:");
        assert_eq!(s.pool_size, 16, "missing fields take their defaults");
        let json = serde_json::to_value(ValkeySettings::default()).unwrap();
        assert_eq!(json["timeout"], "250ms");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure returns figment::Error
    fn every_field_can_be_set_from_the_environment() {
        use figment::providers::{Env, Serialized};
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLUX_VALKEY__URL", "rediss://cache:6380/1");
            jail.set_env("FLUX_VALKEY__USERNAME", "bff");
            jail.set_env("FLUX_VALKEY__PASSWORD", "pw");
            jail.set_env("FLUX_VALKEY__PASSWORD_FILE", "/run/secrets/valkey");
            jail.set_env("FLUX_VALKEY__DATABASE", "2");
            jail.set_env("FLUX_VALKEY__KEY_PREFIX", "bff2:");
            jail.set_env("FLUX_VALKEY__POOL_SIZE", "32");
            jail.set_env("FLUX_VALKEY__TIMEOUT", "500ms");
            jail.set_env("FLUX_VALKEY__ENABLED", "false");
            let s: ValkeySettings =
                figment::Figment::from(Serialized::defaults(ValkeySettings::default()))
                    .merge(Env::prefixed("FLUX_VALKEY__"))
                    .extract()?;
            assert_eq!(
                s,
                ValkeySettings {
                    url: "rediss://cache:6380/1".into(),
                    username: Some("bff".into()),
                    password: Some("pw".into()),
                    password_file: Some("/run/secrets/valkey".into()),
                    database: 2,
                    key_prefix: "bff2:".into(),
                    pool_size: 32,
                    timeout: Duration::from_millis(500),
                    enabled: false,
                }
            );
            Ok(())
        });
    }

    #[test]
    fn host_and_port_build_a_url() {
        assert_eq!(
            ValkeySettings::url_for("valkey", 6379).as_deref(),
            Ok("redis://valkey:6379")
        );
        assert_eq!(
            ValkeySettings::url_for("::1", 6379).as_deref(),
            Ok("redis://[::1]:6379")
        );
        assert_eq!(
            ValkeySettings::url_for("[fd00::7]", 6380).as_deref(),
            Ok("redis://[fd00::7]:6380")
        );
    }

    #[test]
    fn a_host_with_a_port_is_refused_naming_the_variables() {
        let err = ValkeySettings::url_for("valkey:6379", 6379).unwrap_err();
        assert!(err.starts_with("VALKEY_HOST: "), "{err}");
        assert!(err.contains("\"valkey:6379\""), "{err}");
        assert!(err.contains("VALKEY_PORT"), "{err}");
        for host in ["", " valkey", "redis://valkey", "valkey/1"] {
            assert!(ValkeySettings::url_for(host, 6379).is_err(), "{host:?}");
        }
        let err = ValkeySettings::url_for("u:secret@valkey", 6379).unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }
}
