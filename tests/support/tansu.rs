//! A tansu broker (Kafka protocol, in-memory storage) spawned on a free loopback port for one
//! test, killed on drop. The binary comes from `FLUX_TEST_TANSU`, else PATH, else
//! `~/.cargo/bin/tansu`. Install it with:
//! `cargo install tansu --locked --version 0.6.0 --no-default-features --features dynostore`

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::{Client, ClientBuilder};

const INSTALL_HINT: &str = "tansu is needed for the Kafka integration tests: install it with \
    `cargo install tansu --locked --version 0.6.0 --no-default-features --features dynostore` \
    (or point FLUX_TEST_TANSU at the binary)";

pub struct Tansu {
    child: Child,
    /// Where tansu listens.
    pub listen: SocketAddr,
    /// What tansu tells clients to connect to (its own address, or a proxy in front of it).
    pub advertised: SocketAddr,
    log: PathBuf,
}

/// A free loopback port (bound then released; a race with another process is unlikely).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLUX_TEST_TANSU") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FLUX_TEST_TANSU={} is not a file; {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|dir| dir.join("tansu"))
            .collect::<Vec<_>>()
    });
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    on_path
        .chain(cargo_bin)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("tansu not found on PATH nor in ~/.cargo/bin; {INSTALL_HINT}"))
}

impl Tansu {
    /// A broker that advertises its own address.
    pub async fn start() -> Self {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        Self::start_advertising(addr, addr).await
    }

    /// A broker listening on `listen` that tells clients to connect to `advertised`.
    pub async fn start_advertising(listen: SocketAddr, advertised: SocketAddr) -> Self {
        let log = std::env::temp_dir().join(format!("flux-test-tansu-{}.log", listen.port()));
        let log_file = std::fs::File::create(&log).expect("tansu log file in the temp dir");
        let child = Command::new(binary())
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://{listen}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{advertised}"))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu: {e}; {INSTALL_HINT}"));
        let mut tansu = Self {
            child,
            listen,
            advertised,
            log,
        };
        tansu.wait_listening().await;
        tansu
    }

    async fn wait_listening(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tansu exited with {status} at start-up:\n{}",
                    self.log_text()
                );
            }
            if tokio::net::TcpStream::connect(self.listen).await.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {} within 20 s:\n{}",
                self.listen,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The bootstrap address for clients (the advertised one).
    pub fn bootstrap(&self) -> String {
        self.advertised.to_string()
    }

    /// A plain rskafka client with `client_id`, for producing and inspecting behind the
    /// adapters' back.
    pub async fn client(&self, client_id: &str) -> Arc<Client> {
        let started = Instant::now();
        loop {
            match ClientBuilder::new(vec![self.bootstrap()])
                .client_id(client_id)
                .build()
                .await
            {
                Ok(client) => return Arc::new(client),
                Err(e) if started.elapsed() > Duration::from_secs(20) => {
                    panic!(
                        "tansu at {} does not answer: {e}\n{}",
                        self.bootstrap(),
                        self.log_text()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Creates `topic` with `partitions` and waits until the metadata shows all of them.
    pub async fn create_topic(&self, client: &Client, topic: &str, partitions: i32) {
        client
            .controller_client()
            .expect("controller client")
            .create_topic(topic, partitions, 1, 5_000)
            .await
            .unwrap_or_else(|e| panic!("cannot create topic {topic}: {e}"));
        let started = Instant::now();
        loop {
            let topics = client.list_topics().await.expect("list topics");
            if topics
                .iter()
                .any(|t| t.name == topic && t.partitions.len() == partitions as usize)
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "topic {topic} with {partitions} partitions not visible after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
