//! A private redis-server (or valkey-server) for one test: spawned on a free loopback port with
//! no persistence, killed, paused, resumed and restarted on the same port by the test, and
//! killed when the guard drops.
//!
//! The binary is `redis-server` from PATH, or the path in `FLUX_TEST_REDIS_SERVER`. When it is
//! missing the test fails with the install command (it never skips silently).

#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BINARY_ENV: &str = "FLUX_TEST_REDIS_SERVER";

pub struct RedisServer {
    port: u16,
    password: Option<String>,
    /// Certificate and key (self-signed, for 127.0.0.1) when the server speaks TLS only.
    tls: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without a password.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// Starts a server that requires `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> Self {
        Self::spawn(Some(password.to_owned()))
    }

    /// Starts a TLS-only server with a fresh self-signed certificate for 127.0.0.1 (made with
    /// the `openssl` command). Connect with `rediss://127.0.0.1:PORT/#insecure`.
    pub fn start_tls() -> Self {
        let dir = std::env::temp_dir().join(format!("flux-redis-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl to make a test certificate: {e}. Install it with `sudo apt-get install -y openssl`")
            });
        assert!(
            status.success(),
            "openssl could not make a test certificate"
        );
        let mut server = Self {
            port: free_port(),
            password: None,
            tls: Some((cert, key)),
            child: None,
        };
        server.restart();
        server
    }

    fn spawn(password: Option<String>) -> Self {
        let mut server = Self {
            port: free_port(),
            password,
            tls: None,
            child: None,
        };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`, without credentials.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A synchronous client for checking what the adapter wrote (with the password, if any).
    pub fn raw(&self) -> redis::Connection {
        let url = match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("cannot reach the test redis-server on {}: {e}", self.port))
    }

    /// Kills the server (SIGKILL) and waits for it to exit: every connection drops at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let binary = std::env::var(BINARY_ENV).unwrap_or_else(|_| "redis-server".into());
        let mut command = Command::new(&binary);
        let port = self.port.to_string();
        match &self.tls {
            None => command.args(["--port", &port]),
            Some((cert, key)) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(cert),
        };
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {binary:?}: {e}. Install it with `sudo apt-get install -y redis-server` \
                 (Debian/Ubuntu), or point {BINARY_ENV} at a redis-server or valkey-server binary"
            )
        });
        self.child = Some(child);
        self.wait_until_answering();
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers (half-open).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server is running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("the kill command exists");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    fn wait_until_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server exited at start-up ({status}) on port {}; run it by hand to see why",
                    self.port
                );
            }
            let ready = match self.tls {
                None => answers_ping(self.port),
                Some(_) => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill(); // SIGKILL ends a paused (SIGSTOPped) server too
        if let Some(dir) = self.tls.as_ref().and_then(|(cert, _)| cert.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("can bind a loopback port")
}

/// Any RESP reply to PING (`+PONG`, or `-NOAUTH` when a password is required) means it is up.
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 1];
    matches!(stream.read(&mut reply), Ok(1) if reply[0] == b'+' || reply[0] == b'-')
}
