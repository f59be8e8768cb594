//! The bb8 connection manager for Valkey and the classification of redis errors into what the
//! cache does next (count it, or go degraded) and what the operator is told.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8::{ErrorSink, ManageConnection, Pool};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError};
use tokio::sync::Notify;

/// A pooled connection. Calls do not hold it: each takes a [`Lease`] (a clone of the
/// multiplexed connection, which pipelines the commands of all its clones on one socket) and
/// returns it to the pool at once, so the pool size bounds connections, not concurrent calls.
pub(crate) struct Conn {
    inner: MultiplexedConnection,
    /// Set through a lease whose call failed or timed out, so that the pool drops this
    /// connection instead of handing it out again (redis' multiplexed connection cannot tell).
    broken: Arc<AtomicBool>,
}

impl Conn {
    fn new(inner: MultiplexedConnection) -> Self {
        Self {
            inner,
            broken: Arc::default(),
        }
    }

    /// A handle for one call; the pooled connection can go back to the pool meanwhile.
    pub(crate) fn lease(&self) -> Lease {
        Lease {
            inner: self.inner.clone(),
            broken: Arc::clone(&self.broken),
        }
    }

    /// A lease of this connection failed: dropping it (rather than returning it to the pool)
    /// closes it for good.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }
}

/// One call's share of a pooled connection.
pub(crate) struct Lease {
    pub(crate) inner: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl Lease {
    /// Keeps the pooled connection from being handed out again.
    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone)]
pub(crate) struct Connector {
    client: Client,
    config: AsyncConnectionConfig,
}

impl Connector {
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Self { client, config }
    }

    /// A fresh connection that answered `PING` and leads to a primary: the background probe's
    /// way back to normal mode.
    ///
    /// A replica answers `PING` (and reads) but refuses every write with READONLY; taken for
    /// a working server, it put the cache back up after each failed write, to go down again
    /// at the next one. `ROLE` tells; a server that refuses `ROLE` (an @admin command a
    /// least-privilege ACL user lacks) is taken at its `PING`.
    pub(crate) async fn connect_and_check(&self) -> Result<Conn, Failure> {
        let connected = async {
            let mut conn = self.connect().await?;
            self.is_valid(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        let mut conn = connected
            .await
            .map_err(|e| Failure::from_connect_error(&e))?;
        match redis::cmd("ROLE")
            .query_async::<Vec<redis::Value>>(&mut conn.inner)
            .await
        {
            Ok(reply) => {
                let role = reply
                    .into_iter()
                    .next()
                    .and_then(|role| redis::from_redis_value::<String>(role).ok())
                    .unwrap_or_default();
                if matches!(role.as_str(), "slave" | "replica") {
                    return Err(Failure::Down {
                        cause: format!(
                            "is a replica (ROLE answered {role:?}): it refuses every write with READONLY; point FLUX_VALKEY__URL (valkey.url, or VALKEY_HOST) at the primary"
                        ),
                        dropped: false,
                    });
                }
            }
            Err(error) if error.code().is_some() => {
                tracing::debug!(error = %error, "valkey refused ROLE; taking it for a primary");
            }
            Err(error) => return Err(Failure::from_connect_error(&error)),
        }
        Ok(conn)
    }

    pub(crate) fn pool(&self, size: u32, timeout: Duration, sink: &ConnectErrors) -> Pool<Self> {
        Pool::builder()
            .max_size(size)
            .connection_timeout(timeout)
            // Liveness is learnt from the calls themselves (a failed call marks its connection
            // broken), so a checkout costs no extra PING round trip.
            .test_on_check_out(false)
            // The background probe reconnects; the pool must not retry for a whole timeout.
            .retry_connection(false)
            .error_sink(Box::new(sink.clone()))
            .build_unchecked(self.clone())
    }
}

impl ManageConnection for Connector {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Conn::new(inner))
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        let pong: String = redis::cmd("PING").query_async(&mut conn.inner).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err((ErrorKind::UnexpectedReturnType, "PING answered", pong).into())
        }
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.is_broken()
    }
}

/// Receives the errors of the pool's own connection attempts (bb8 otherwise reports only
/// "timed out"), so that a call waiting for a connection fails at once with the real cause.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectErrors {
    last: Arc<Mutex<Option<RedisError>>>, // std Mutex: never held across an .await
    failed: Arc<Notify>,
}

impl ConnectErrors {
    /// The latest failure, shared by every call that was waiting for a connection.
    pub(crate) fn last(&self) -> Option<RedisError> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets the latest failure once the server is reachable again, so that it cannot
    /// explain a later one.
    pub(crate) fn clear(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Completes at the next failed connection attempt. Registered as soon as it is created.
    pub(crate) fn failed(&self) -> tokio::sync::futures::Notified<'_> {
        self.failed.notified()
    }
}

impl ErrorSink<RedisError> for ConnectErrors {
    fn sink(&self, error: RedisError) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        self.failed.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}

/// Why a call failed, and so what happens next.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No answer before the deadline: the cache goes degraded.
    Timeout,
    /// The server cannot be used at all (unreachable, refused, credentials): degraded.
    Down { cause: String, dropped: bool },
    /// This command failed but the server works (wrong type, out of memory, no permission):
    /// counted as an error, the cache stays up. `code` is the server's error code (`NOPERM`,
    /// `WRONGTYPE`, …), or the kind of a failure on this side (`type error`).
    Command { code: String, message: String },
}

impl Failure {
    pub(crate) fn from_redis(error: &RedisError) -> Self {
        if error.is_timeout() {
            return Self::Timeout; // redis' own connection or response timeout
        }
        if matches!(error.code(), Some("READONLY" | "MASTERDOWN")) {
            // The node was demoted, or lost its primary, in a failover: this connection leads
            // to the wrong node. Treated as dropped: the pool is replaced, so the next
            // connection resolves the URL again and reaches the new primary (a retryable call
            // is retried there at once), instead of every write failing on the old one.
            return Self::Down {
                cause: format!(
                    "answered {} (a failover: the URL no longer leads to the primary; check that FLUX_VALKEY__URL names the primary's endpoint)",
                    error.code().unwrap_or_default()
                ),
                dropped: true,
            };
        }
        let auth = is_auth_failure(error);
        let transport = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error();
        if auth || transport {
            Self::Down {
                cause: describe(error),
                dropped: !auth && error.is_connection_dropped() && !error.is_connection_refusal(),
            }
        } else {
            Self::Command {
                code: error
                    .code()
                    .map_or_else(|| error.category().to_owned(), str::to_owned),
                message: match (error.code(), error.detail()) {
                    (Some(code), Some(detail)) => format!("{code} {detail}"), // as the server said it
                    _ => error.to_string(),
                },
            }
        }
    }

    /// A failed connection attempt: whatever the error, the server cannot be used. Never a
    /// dropped connection, even when the attempt was reset or cut short: there was no pooled
    /// connection to find dead, and retrying on a fresh pool would only attempt again.
    pub(crate) fn from_connect_error(error: &RedisError) -> Self {
        match Self::from_redis(error) {
            Self::Command { message, .. } => Self::Down {
                cause: format!("failed: {message}"),
                dropped: false,
            },
            Self::Down { cause, .. } => Self::Down {
                cause,
                dropped: false,
            },
            Self::Timeout => Self::Timeout,
        }
    }

    /// Worth one immediate retry on another connection: the pooled connection was dead (the
    /// server restarted or closed an idle connection) before the command could run.
    pub(crate) fn is_dropped_connection(&self) -> bool {
        matches!(self, Self::Down { dropped: true, .. })
    }
}

fn is_auth_failure(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// What to do about a command the server refused although it works, by error code: the
/// cache stays up, so every call like it fails until someone acts.
pub(crate) fn command_fix(code: &str) -> &'static str {
    match code {
        "NOPERM" => {
            "the ACL user lacks a permission the gateway needs: allow PING, GET, SET, DEL and EVAL on its keys, e.g. ACL SETUSER <user> +ping +get +set +del +eval ~<key_prefix>*"
        }
        "MOVED" | "ASK" | "CROSSSLOT" | "CLUSTERDOWN" | "TRYAGAIN" => {
            "FLUX_VALKEY__URL names a node of a cluster, and the gateway speaks to one server: point it at a standalone server or a primary with cluster mode off"
        }
        "WRONGTYPE" => {
            "a key under valkey.key_prefix holds a value of another type, written by something else: give the gateway a key_prefix of its own (FLUX_VALKEY__KEY_PREFIX)"
        }
        "OOM" => {
            "Valkey is at maxmemory and evicts nothing (maxmemory-policy noeviction): raise maxmemory or choose volatile-lru or allkeys-lru (every key the gateway writes expires)"
        }
        "LOADING" => "Valkey is loading its data set: calls fail until it is done",
        "BUSY" => {
            "a script of another client keeps the server busy: see SCRIPT KILL and busy-reply-threshold"
        }
        _ => "see the error; check that FLUX_VALKEY__URL names a Valkey or Redis server",
    }
}

/// What the operator reads after "Valkey at host:port": the cause and the fix.
pub(crate) fn describe(error: &RedisError) -> String {
    if error.code() == Some("NOAUTH") {
        return "requires a password (NOAUTH, authentication required): set VALKEY_PASSWORD / FLUX_VALKEY__PASSWORD (or the password file)".into();
    }
    if is_auth_failure(error) {
        return "refused the password (WRONGPASS, authentication failed): check VALKEY_PASSWORD / FLUX_VALKEY__PASSWORD (or the password file) and FLUX_VALKEY__USERNAME".into();
    }
    if error.is_connection_refusal() {
        return "refused the connection: is Valkey running there? check FLUX_VALKEY__URL (or VALKEY_HOST / VALKEY_PORT)".into();
    }
    if error.is_connection_dropped() {
        return format!("closed the connection ({error})");
    }
    format!("failed: {error}")
}

#[cfg(test)]
mod tests {
    use redis::ServerErrorKind;

    use super::*;

    #[test]
    fn a_wrong_password_is_an_authentication_failure_that_names_the_fix() {
        let error = RedisError::from((
            ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        let Failure::Down { cause, dropped } = Failure::from_redis(&error) else {
            panic!("an authentication failure must put the cache down");
        };
        assert!(!dropped);
        assert!(cause.contains("authentication failed"), "{cause}");
        assert!(cause.contains("VALKEY_PASSWORD"), "{cause}");
    }

    #[test]
    fn a_refused_connection_puts_the_cache_down_and_is_not_retried() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let failure = Failure::from_redis(&RedisError::from(io));
        assert!(
            matches!(&failure, Failure::Down { cause, .. } if cause.starts_with("refused the connection"))
        );
        assert!(!failure.is_dropped_connection());
    }

    #[test]
    fn a_broken_pipe_is_retried_once() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(Failure::from_redis(&RedisError::from(io)).is_dropped_connection());
    }

    #[test]
    fn a_redis_timeout_is_a_timeout() {
        let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(matches!(
            Failure::from_redis(&RedisError::from(io)),
            Failure::Timeout
        ));
    }

    /// Found by review: a connection attempt reset or cut short (a server restarting, a proxy
    /// with no backend) counted as a dropped pooled connection, so the call retried on a
    /// fresh pool, replacing the pool again for a server that cannot be reached.
    #[test]
    fn a_failed_connection_attempt_is_never_a_dropped_connection() {
        for kind in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            let error = RedisError::from(std::io::Error::from(kind));
            assert!(Failure::from_redis(&error).is_dropped_connection());
            let failure = Failure::from_connect_error(&error);
            assert!(
                matches!(failure, Failure::Down { dropped: false, .. }),
                "{kind:?}: {failure:?}"
            );
        }
        let readonly = RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "demoted",
        ));
        assert!(!Failure::from_connect_error(&readonly).is_dropped_connection());
    }

    #[test]
    fn any_failed_connection_attempt_puts_the_cache_down() {
        let error = RedisError::from((ErrorKind::InvalidClientConfig, "no tls"));
        assert!(matches!(
            Failure::from_connect_error(&error),
            Failure::Down { .. }
        ));
    }

    /// Found by review: a write answered READONLY (a node demoted in a failover) was a
    /// command error, so every write failed on the old node until bb8 recycled the
    /// connections (30 min) while the cache counted as up.
    #[test]
    fn a_failover_answer_replaces_the_connections() {
        for kind in [ServerErrorKind::ReadOnly, ServerErrorKind::MasterDown] {
            let error = RedisError::from((ErrorKind::Server(kind), "failover"));
            let failure = Failure::from_redis(&error);
            assert!(failure.is_dropped_connection(), "{failure:?}");
            assert!(
                matches!(&failure, Failure::Down { cause, .. } if cause.contains("FLUX_VALKEY__URL")),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn a_type_error_is_a_command_failure() {
        let error = RedisError::from((ErrorKind::UnexpectedReturnType, "not utf-8"));
        assert!(matches!(
            Failure::from_redis(&error),
            Failure::Command { code, .. } if code == "type error"
        ));
    }

    #[test]
    fn a_refused_command_carries_the_server_s_code_and_words() {
        let error = RedisError::from((
            ErrorKind::Server(ServerErrorKind::NoPerm),
            "NoPerm",
            "this user has no permissions to run the 'eval' command".to_owned(),
        ));
        let Failure::Command { code, message } = Failure::from_redis(&error) else {
            panic!("a refused command leaves the cache up");
        };
        assert_eq!(code, "NOPERM");
        assert_eq!(
            message,
            "NOPERM this user has no permissions to run the 'eval' command"
        );
        assert!(command_fix(&code).contains("+eval"));
    }
}
