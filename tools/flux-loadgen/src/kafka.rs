//! The Kafka injection path: records produced to the gateway's event topics through rskafka
//! (the gateway's Kafka client; many records per produce request), a probe consumer that
//! times the broker alone, and an Apache Kafka broker spawned on a free loopback port for the
//! run. Nothing here comes from the gateway's library: this tool drives the gateway from the
//! outside only, so the few Kafka details it shares with it are copied, each saying where the
//! gateway keeps its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rskafka::BackoffConfig;
use rskafka::chrono::{DateTime, Utc};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::eio::TimestampScanner;
use crate::process::{die_with_parent, free_port};
use crate::stats::{DurationHistogram, LatencySummary, unix_micros};

/// Longest wait for one produce request (or one metadata request).
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// Most key + value bytes in one produce request. rskafka 0.6 writes through an 8 KiB
/// `BufStream` on a socket without `TCP_NODELAY`: a larger request leaves as two writes (the
/// 4-byte length, then the body), and Nagle holds the body until the broker acknowledges
/// the length, which Linux may delay by 40 ms. Smaller requests leave in one write.
pub const MAX_REQUEST_BYTES: usize = 7 * 1024;

/// The gateway's default `kafka.fetch_max_wait` (README, "Kafka" settings), which the probe
/// uses when this tool does not set the spawned gateway's. A copy: keep it equal to the
/// gateway's.
pub const GATEWAY_FETCH_MAX_WAIT: Duration = Duration::from_millis(200);

/// How the broker is had, for error messages.
pub const KAFKA_HINT: &str = "--spawn-kafka runs Apache Kafka through scripts/kafka.sh of the source tree (run from there, or pass --kafka-script PATH); it needs java 17+ and mvn on PATH, and fetches the broker's jars once (`bash scripts/kafka.sh fetch`)";

/// Produces records to the event topics, one produce request per (topic, partition) per call.
/// The partition of a keyed record is Kafka's default (murmur2 of the key), as the domain
/// services would pick it.
pub struct KafkaInjector {
    client: Arc<Client>,
    partitions: HashMap<String, i32>,
    clients: HashMap<(String, i32), PartitionClient>,
}

impl KafkaInjector {
    /// Connects to `bootstrap` and waits (up to `wait`) until every topic of `topics` exists:
    /// a spawned gateway creates them at start-up.
    pub async fn connect(bootstrap: &str, topics: &[&str], wait: Duration) -> anyhow::Result<Self> {
        let client = connect(bootstrap, "flux-loadgen")
            .await
            .with_context(|| format!("--kafka {bootstrap}"))?;
        let deadline = Instant::now() + wait;
        let partitions = loop {
            let listed = tokio::time::timeout(REQUEST_LIMIT, client.list_topics())
                .await
                .map_err(|_| anyhow::anyhow!("listing the topics of {bootstrap} timed out"))?
                .with_context(|| format!("cannot list the topics of {bootstrap}"))?;
            let found: HashMap<String, i32> = listed
                .into_iter()
                .filter(|t| topics.contains(&t.name.as_str()) && !t.partitions.is_empty())
                .map(|t| (t.name, t.partitions.len() as i32))
                .collect();
            if found.len() == topics.len() {
                break found;
            }
            if Instant::now() > deadline {
                let missing: Vec<&&str> =
                    topics.iter().filter(|t| !found.contains_key(**t)).collect();
                bail!(
                    "topics {missing:?} do not exist on {bootstrap} after {wait:?}; start the gateway against this broker first (it creates them) or create them by hand"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Ok(Self {
            client,
            partitions,
            clients: HashMap::new(),
        })
    }

    /// The partition count of `topic` (1 if unknown).
    pub fn partitions(&self, topic: &str) -> i32 {
        self.partitions.get(topic).copied().unwrap_or(1).max(1)
    }

    /// Produces `records` (key, value) to `topic`: per partition, in order, in requests of
    /// at most [`MAX_REQUEST_BYTES`] (one record per request at least). Returns how many
    /// produce requests were sent.
    pub async fn produce(
        &mut self,
        topic: &str,
        records: Vec<(Option<String>, Vec<u8>)>,
    ) -> anyhow::Result<u64> {
        let by_partition = split_requests(self.partitions(topic), records, record_timestamp_now());
        let mut requests = 0;
        for (p, batch) in by_partition {
            let client = self.partition_client(topic, p).await?;
            tokio::time::timeout(
                REQUEST_LIMIT,
                client.produce(batch, Compression::NoCompression),
            )
            .await
            .map_err(|_| {
                anyhow::anyhow!("producing to {topic}/{p}: no answer within {REQUEST_LIMIT:?}")
            })?
            .with_context(|| format!("producing to {topic}/{p}"))?;
            requests += 1;
        }
        Ok(requests)
    }

    async fn partition_client(&mut self, topic: &str, p: i32) -> anyhow::Result<&PartitionClient> {
        let key = (topic.to_owned(), p);
        if !self.clients.contains_key(&key) {
            let c = tokio::time::timeout(
                REQUEST_LIMIT,
                self.client
                    .partition_client(topic, p, UnknownTopicHandling::Retry),
            )
            .await
            .map_err(|_| anyhow::anyhow!("no leader for {topic}/{p} within {REQUEST_LIMIT:?}"))?
            .with_context(|| format!("cannot reach the leader of {topic}/{p}"))?;
            self.clients.insert(key.clone(), c);
        }
        self.clients.get(&key).context("partition client vanished")
    }
}

/// A plain consumer of the ticker topic, fetching with the gateway's max wait on its own
/// connection, that records fetch time − `lg_ts` of every record: the broker's share of the
/// delivery latency (produce, storage, the fetch long-poll), without the gateway.
pub struct Probe {
    hist: Arc<DurationHistogram>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Probe {
    /// Starts one fetch loop per partition of `topic`, from its latest offset; each loop
    /// ends when stopped or after `limit`.
    pub async fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        max_wait: Duration,
        limit: Duration,
    ) -> anyhow::Result<Self> {
        let client = connect(bootstrap, "flux-loadgen-probe")
            .await
            .context("probe")?;
        let hist = Arc::new(DurationHistogram::default());
        let cancel = CancellationToken::new();
        let wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
        let mut tasks = Vec::new();
        for p in 0..partitions.max(1) {
            let pc = tokio::time::timeout(
                REQUEST_LIMIT,
                client.partition_client(topic, p, UnknownTopicHandling::Retry),
            )
            .await
            .map_err(|_| anyhow::anyhow!("probe: no leader for {topic}/{p}"))??;
            let mut offset = tokio::time::timeout(REQUEST_LIMIT, pc.get_offset(OffsetAt::Latest))
                .await
                .map_err(|_| anyhow::anyhow!("probe: no offset for {topic}/{p}"))??;
            let (hist, cancel) = (hist.clone(), cancel.clone());
            tasks.push(tokio::spawn(async move {
                let scanner = TimestampScanner::default();
                let deadline = Instant::now() + limit;
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let fetched = tokio::select! {
                        () = cancel.cancelled() => break,
                        r = tokio::time::timeout(
                            REQUEST_LIMIT + max_wait,
                            pc.fetch_records(offset, 1..16 * 1024 * 1024, wait_ms),
                        ) => r,
                    };
                    match fetched {
                        Ok(Ok((records, _))) => {
                            let now = unix_micros();
                            for r in records {
                                offset = offset.max(r.offset + 1);
                                if let Some(ts) =
                                    r.record.value.as_deref().and_then(|v| scanner.scan(v))
                                {
                                    hist.record_us(now.saturating_sub(ts));
                                }
                            }
                        }
                        _ => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                errors
            }));
        }
        Ok(Self {
            hist,
            cancel,
            tasks,
        })
    }

    /// Stops the fetch loops; returns the latencies and the number of failed fetches.
    pub async fn stop(self) -> (LatencySummary, u64) {
        self.cancel.cancel();
        let mut errors = 0;
        for t in self.tasks {
            errors += t.await.unwrap_or(1);
        }
        (self.hist.summary(), errors)
    }
}

/// An rskafka client of `bootstrap` (plaintext), with the gateway's retry policy at its
/// default `kafka.request_timeout` (5 s): retries from 50 ms, doubling, at most 1 s apart, for
/// 5 s; the whole connect is bounded by twice that, as the gateway's is.
async fn connect(bootstrap: &str, client_id: &str) -> anyhow::Result<Arc<Client>> {
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(REQUEST_TIMEOUT),
    };
    let build = ClientBuilder::new(vec![bootstrap.to_owned()])
        .client_id(client_id)
        .backoff_config(backoff)
        .build();
    let client = tokio::time::timeout(REQUEST_TIMEOUT * 2, build)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no Kafka broker answered within {:?}; check that the broker is up",
                REQUEST_TIMEOUT * 2
            )
        })?
        .context("cannot connect to the Kafka broker")?;
    Ok(Arc::new(client))
}

/// The timestamp of a produced record: the wall clock in whole milliseconds (Kafka's
/// resolution), as the gateway stamps its own records.
fn record_timestamp_now() -> DateTime<Utc> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    DateTime::from_timestamp_millis(millis).unwrap_or(DateTime::UNIX_EPOCH)
}

/// Groups records into produce requests: per partition (Kafka's default partitioner), in
/// order, at most [`MAX_REQUEST_BYTES`] of keys and values each (at least one record).
fn split_requests(
    partitions: i32,
    records: Vec<(Option<String>, Vec<u8>)>,
    timestamp: DateTime<Utc>,
) -> Vec<(i32, Vec<Record>)> {
    // (partition, records, bytes); a partition's later chunk follows its earlier one.
    let mut chunks: Vec<(i32, Vec<Record>, usize)> = Vec::new();
    for (seq, (key, value)) in records.into_iter().enumerate() {
        let p = partition_of(partitions, key.as_deref(), seq);
        let size = value.len() + key.as_ref().map_or(0, String::len);
        let record = Record {
            key: key.map(String::into_bytes),
            value: Some(value),
            headers: Default::default(),
            timestamp,
        };
        match chunks.iter_mut().rev().find(|(q, _, _)| *q == p) {
            Some((_, batch, bytes)) if *bytes + size <= MAX_REQUEST_BYTES => {
                batch.push(record);
                *bytes += size;
            }
            _ => chunks.push((p, vec![record], size)),
        }
    }
    chunks.into_iter().map(|(p, batch, _)| (p, batch)).collect()
}

/// Kafka's default partitioner for a keyed record (murmur2); unkeyed records rotate.
fn partition_of(partitions: i32, key: Option<&str>, seq: usize) -> i32 {
    let n = partitions.max(1) as usize;
    match key {
        Some(k) => ((murmur2(k.as_bytes()) & 0x7fff_ffff) as u32 % n as u32) as i32,
        None => (seq % n) as i32,
    }
}

/// Kafka's `Utils.murmur2` (seed `0x9747b28c`), the hash of its default partitioner. A copy of
/// the gateway's (its Kafka partitioner module); the reference vectors below pin both.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// An Apache Kafka broker (single-node KRaft, `scripts/kafka.sh run`) started by this tool
/// with its data in a temporary directory; killed on drop, and by the kernel if this tool dies.
pub struct KafkaProcess {
    pub bootstrap: String,
    pub pid: Option<u32>,
    child: Child,
    dir: PathBuf,
}

impl KafkaProcess {
    /// Runs `script` (default: [`find_kafka_script`]) on a free loopback port and waits (up to
    /// 90 s) until the broker says it started. Its output goes to `log`, else to a file in its
    /// temporary directory that is removed with it.
    /// A port taken by another process between choosing it and the broker binding it (other
    /// tests, other brokers on the machine) is retried on another port, twice.
    pub async fn spawn(script: Option<&Path>, log: Option<&Path>) -> anyhow::Result<Self> {
        let script = match script {
            Some(s) => s.to_path_buf(),
            None => find_kafka_script()
                .with_context(|| format!("scripts/kafka.sh not found; {KAFKA_HINT}"))?,
        };
        let mut attempt = 1;
        loop {
            match Self::spawn_once(&script, log).await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    eprintln!("flux-loadgen: the broker's port was taken meanwhile; another port");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn spawn_once(script: &Path, log: Option<&Path>) -> anyhow::Result<Self> {
        let port = free_port().context("no free loopback port for Kafka")?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!("flux-loadgen-kafka-{port}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the broker's directory {}", dir.display()))?;
        let log = log.map_or_else(|| dir.join("broker.log"), Path::to_path_buf);
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create the broker log {}", log.display()))?;
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .arg("run")
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        // `run` execs the JVM: the child's pid is the broker's, for CPU sampling.
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}; {KAFKA_HINT}", script.display()))?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("Address already in use") {
                    bail!("the Kafka broker could not bind {addr}: Address already in use");
                }
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                bail!(
                    "the Kafka broker exited during start-up with {status}; {KAFKA_HINT}. Its log ({}) ends:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let started =
                std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Kafka Server started"));
            if started && tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the Kafka broker did not start on {addr} within 90 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            bootstrap: addr.to_string(),
            pid: child.id(),
            child,
            dir,
        })
    }
}

impl Drop for KafkaProcess {
    fn drop(&mut self) {
        // The child is killed on drop (kill_on_drop) right after this; its data goes now.
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `scripts/kafka.sh` of the source tree: under the working directory, else above the
/// executable (`target/<profile>/flux-loadgen`).
pub fn find_kafka_script() -> Option<PathBuf> {
    let here = std::env::current_dir()
        .ok()
        .map(|d| d.join("scripts/kafka.sh"));
    let beside_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .nth(3)
            .map(|root| root.join("scripts/kafka.sh"))
    });
    here.into_iter().chain(beside_exe).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_reference_vectors_of_kafkas_utils_test() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn keyed_records_follow_the_default_partitioner_and_unkeyed_ones_rotate() {
        assert_eq!(partition_of(1, Some("BTC-USD"), 7), 0);
        // murmur2("foobar") = -790332482; sign bit masked: 1357151166.
        assert_eq!(partition_of(3, Some("foobar"), 0), 0);
        assert_eq!(partition_of(8, Some("foobar"), 0), 6);
        assert_eq!(partition_of(11, Some("foobar"), 0), 8);
        assert_eq!(partition_of(4, None, 6), 2);
        assert_eq!(
            partition_of(0, None, 6),
            0,
            "no metadata means one partition"
        );
    }

    #[test]
    fn requests_stay_under_the_buffer_size_and_keep_each_partitions_order() {
        let value = |i: usize| format!("{i:0>1000}").into_bytes();
        let records: Vec<_> = (0..20)
            .map(|i| (Some(["a", "b"][i % 2].to_owned()), value(i)))
            .collect();
        let requests = split_requests(2, records, record_timestamp_now());
        let total: usize = requests.iter().map(|(_, r)| r.len()).sum();
        assert_eq!(total, 20);
        for (_, batch) in &requests {
            let bytes: usize = batch
                .iter()
                .map(|r| r.value.as_ref().map_or(0, Vec::len) + 1)
                .sum();
            assert!(bytes <= MAX_REQUEST_BYTES, "{bytes}");
            assert!(!batch.is_empty());
        }
        // Keys a and b land in their murmur2 partitions, each in its original order.
        for key in ["a", "b"] {
            let p = partition_of(2, Some(key), 0);
            let seen: Vec<Vec<u8>> = requests
                .iter()
                .filter(|(q, _)| *q == p)
                .flat_map(|(_, b)| {
                    b.iter()
                        .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
                })
                .map(|r| r.value.clone().unwrap())
                .collect();
            let first = usize::from(key == "b");
            let expected: Vec<Vec<u8>> = (first..20).step_by(2).map(value).collect();
            assert_eq!(seen, expected, "{key}");
        }
        // A record larger than the limit still goes, alone.
        let big = split_requests(
            1,
            vec![(None, vec![b'x'; MAX_REQUEST_BYTES * 2])],
            record_timestamp_now(),
        );
        assert_eq!(big.len(), 1);
    }

    #[test]
    fn the_record_clock_is_the_wall_clock() {
        let ms = record_timestamp_now().timestamp_millis();
        assert!(ms > 1_700_000_000_000, "{ms}");
    }
}
