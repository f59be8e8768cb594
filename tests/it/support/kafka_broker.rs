//! An Apache Kafka 4 broker (single-node KRaft, broker and controller in one JVM) spawned on a
//! free loopback port for one test, killed on drop. `scripts/kafka.sh run` writes its config
//! and runs it; the jars come from Maven Central through `scripts/kafka.sh fetch` (the test
//! command runs it first; a test that finds no jars fetches them itself, or fails naming why).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::{Client, ClientBuilder};

const HINT: &str = "the Kafka integration tests run Apache Kafka from the jars that \
    `scripts/kafka.sh fetch` puts in ~/.cache/flux-bff (needs java 17+ and mvn on PATH)";

/// How long a broker may take to answer after its start (a JVM on a busy 2-core machine).
const START_LIMIT: Duration = Duration::from_secs(60);

pub struct KafkaBroker {
    child: Option<Child>,
    /// Where the broker listens.
    pub listen: SocketAddr,
    /// What the broker tells clients to connect to (its own address, or a proxy in front).
    pub advertised: SocketAddr,
    dir: PathBuf,
    /// `scripts/kafka.sh run`'s environment: a node that joins another one.
    env: Vec<(&'static str, String)>,
}

/// A free loopback port (bound then released; a race with another process is unlikely).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

impl KafkaBroker {
    /// A broker that advertises its own address.
    pub async fn start() -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self::start_advertising(addr, addr).await
    }

    /// A broker whose topics are created with `partitions` partitions unless the request
    /// says otherwise (`num.partitions`).
    pub async fn start_with_default_partitions(partitions: i32) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let env = vec![("KAFKA_NUM_PARTITIONS", partitions.to_string())];
        Self::start_with(addr, addr, env).await
    }

    /// A broker listening on `listen` that tells clients to connect to `advertised`.
    pub async fn start_advertising(listen: SocketAddr, advertised: SocketAddr) -> Self {
        Self::start_with(listen, advertised, Vec::new()).await
    }

    async fn start_with(
        listen: SocketAddr,
        advertised: SocketAddr,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flux-test-kafka-{}-{}",
            listen.port(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("broker directory in the temp dir");
        let mut broker = Self {
            child: None,
            listen,
            advertised,
            dir,
            env,
        };
        broker.spawn().await;
        broker
    }

    /// A second broker (node 2, broker only) in this one's cluster: for topics with two
    /// replicas, whose follower can be stopped.
    pub async fn start_follower(&self) -> Self {
        let read = |name: &str| {
            std::fs::read_to_string(self.dir.join(name))
                .unwrap_or_else(|e| panic!("{name} of the first broker: {e}"))
        };
        let controller = read("controller.port").trim().to_owned();
        let meta = read("data/meta.properties");
        let cluster = meta
            .lines()
            .find_map(|l| l.strip_prefix("cluster.id="))
            .expect("cluster.id in meta.properties")
            .to_owned();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let env = vec![
            ("KAFKA_NODE_ID", "2".to_owned()),
            ("KAFKA_JOIN", format!("127.0.0.1:{controller}")),
            ("KAFKA_CLUSTER_ID", cluster),
        ];
        Self::start_with(addr, addr, env).await
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("broker log file");
        let child = Command::new("bash")
            .arg(script())
            .arg("run")
            .arg(&self.dir)
            .arg(self.listen.port().to_string())
            .arg(self.advertised.to_string())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run scripts/kafka.sh: {e}; {HINT}"));
        self.child = Some(child);
        self.wait_listening().await;
    }

    async fn wait_listening(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the Kafka broker exited with {status} at start-up; {HINT}:\n{}",
                    self.log_text()
                );
            }
            if self.log_text().contains("Kafka Server started")
                && tokio::net::TcpStream::connect(self.listen).await.is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "the Kafka broker did not start on {} within {START_LIMIT:?}:\n{}",
                self.listen,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The bootstrap address for clients (the advertised one).
    pub fn bootstrap(&self) -> String {
        self.advertised.to_string()
    }

    /// Stops the broker: SIGTERM (a clean shutdown) when `graceful`, else SIGKILL (a crash).
    pub fn stop(&mut self, graceful: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if graceful {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the broker cleanly (if it runs) and starts it again on the same port with the
    /// same data.
    pub async fn restart(&mut self) {
        self.stop(true);
        self.spawn().await;
    }

    /// Kills the broker and starts a new one on the same port with empty storage: topics and
    /// offsets are gone, as after losing the broker's disk.
    pub async fn restart_empty(&mut self) {
        self.stop(false);
        std::fs::remove_dir_all(self.dir.join("data")).expect("remove the broker's data");
        self.spawn().await;
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
                        "Kafka at {} does not answer: {e}\n{}",
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
        self.wait_partitions(client, topic, partitions).await;
    }

    /// Waits until the metadata that `client` sees shows `topic` with `partitions`.
    pub async fn wait_partitions(&self, client: &Client, topic: &str, partitions: i32) {
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

    /// Runs Kafka's own kafka-topics (TopicCommand) against this broker, e.g.
    /// `["--alter", "--topic", t, "--partitions", "3"]`; panics with its output if it fails.
    pub async fn topics(&self, args: &[&str]) -> String {
        let mut all = vec!["--bootstrap-server".to_owned(), self.listen.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        self.tool("org.apache.kafka.tools.TopicCommand", all).await
    }

    /// The in-sync replicas of partition 0 of `topic`, as Kafka's kafka-topics describes them.
    pub async fn in_sync(&self, topic: &str) -> String {
        let text = self.topics(&["--describe", "--topic", topic]).await;
        text.split("Isr: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no Isr in {text}"))
            .to_owned()
    }

    /// Starts one of Kafka's tools (`scripts/kafka.sh tool CLASS ARGS`) and returns at once,
    /// its output discarded: for a producer the test kills mid-transaction.
    pub fn spawn_tool(&self, class: &str, args: &[&str]) -> Child {
        Command::new("bash")
            .arg(script())
            .arg("tool")
            .arg(class)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run scripts/kafka.sh tool: {e}; {HINT}"))
    }

    /// Runs one of Kafka's tools (`scripts/kafka.sh tool CLASS ARGS`); panics with its output
    /// if it fails, else returns it.
    pub async fn tool(&self, class: &str, args: Vec<String>) -> String {
        let script = script();
        let class = class.to_owned();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg(script)
                .arg("tool")
                .arg(class)
                .args(&args)
                .output()
        })
        .await
        .expect("kafka tool task")
        .unwrap_or_else(|e| panic!("cannot run scripts/kafka.sh tool: {e}; {HINT}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "kafka tool failed: {text}");
        text
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop(false);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
