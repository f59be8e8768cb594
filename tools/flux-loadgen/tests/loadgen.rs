//! End to end: `flux-loadgen` spawns the real `flux-bff` in embedded benchmark mode and
//! drives a small fanout, connect and idle run through it, then the same in Kafka mode
//! against Apache Kafka it starts itself (`--spawn-kafka`; the figures are not asserted, only
//! that the instrument works: every delivery arrives and is counted).
//!
//! The gateway is another package's binary, so it is not built for these tests by
//! `cargo test -p flux-loadgen`: it is taken from beside `flux-loadgen` (the same target
//! profile directory), where `cargo test --workspace` (scripts/test.sh) or
//! `cargo build --bin flux-bff` puts it. Without it every test fails, naming the command.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The `flux-bff` binary in the directory of `flux-loadgen` (`target/<profile>/`).
fn gateway() -> PathBuf {
    let loadgen = Path::new(env!("CARGO_BIN_EXE_flux-loadgen"));
    let dir = loadgen.parent().expect("flux-loadgen is in a directory");
    let gateway = dir.join(format!("flux-bff{}", std::env::consts::EXE_SUFFIX));
    assert!(
        gateway.is_file(),
        "the gateway binary {} is missing: these tests run the flux-bff built beside \
         flux-loadgen. Build it with the same profile first (`cargo build --bin flux-bff`, with \
         --release if the tests run with it), or run `cargo test --workspace`, which builds it",
        gateway.display()
    );
    gateway
}

/// The source tree's `scripts/kafka.sh`, for `--spawn-kafka`.
fn kafka_script() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka.sh");
    assert!(script.is_file(), "{} is missing", script.display());
    script.to_string_lossy().into_owned()
}

fn run_loadgen(args: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!("flux-loadgen-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("result.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_flux-loadgen"))
        .arg("--spawn")
        .arg(gateway())
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()
        .expect("flux-loadgen starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "flux-loadgen {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let line = std::fs::read_to_string(&json).expect("the JSON line was written");
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_str(line.trim()).expect("one JSON line")
}

#[test]
fn fanout_counts_every_delivery_of_a_small_run() {
    let r = run_loadgen(&[
        "fanout",
        "--clients",
        "20",
        "--rate",
        "100",
        "--duration",
        "1",
    ]);
    assert_eq!(r["scenario"], "fanout");
    assert_eq!(r["clients_ready"], 20);
    assert_eq!(r["joins_unconfirmed"], 0, "{r}");
    assert_eq!(r["events_injected"], 100);
    assert_eq!(r["expected_deliveries"], 2000);
    assert_eq!(r["received_deliveries"], 2000, "{r}");
    assert_eq!(r["missing_deliveries"], 0);
    assert_eq!(r["frame_bytes"], 520);
    assert_eq!(r["latency"]["count"], 2000);
    assert!(r["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(
        r["gw_rss_mb_max"].as_f64().unwrap() > 1.0,
        "gateway sampled: {r}"
    );
}

#[test]
fn connect_and_idle_report_handshakes_and_memory() {
    let r = run_loadgen(&["connect", "--clients", "30", "--concurrency", "10"]);
    assert_eq!(r["connected"], 30, "{r}");
    assert_eq!(r["hydrated"], 30, "{r}");
    assert_eq!(r["session_init"]["count"], 30);
    let r = run_loadgen(&["idle", "--clients", "40", "--step", "20", "--settle", "0.2"]);
    assert_eq!(r["connected"], 40, "{r}");
    assert_eq!(r["steps"].as_array().map(Vec::len), Some(3));
    assert!(r["gw_rss_mb_idle"].as_f64().unwrap() > 1.0);
}

#[test]
fn kafka_injection_reaches_every_client() {
    let script = kafka_script();
    let r = run_loadgen(&[
        "--spawn-kafka",
        "--kafka-script",
        &script,
        "--fetch-max-wait",
        "20ms",
        "fanout",
        "--clients",
        "10",
        "--rate",
        "50",
        "--duration",
        "1",
    ]);
    assert_eq!(r["injection"], "kafka", "{r}");
    assert_eq!(r["kafka_fetch_max_wait"], "20ms");
    assert_eq!(r["clients_ready"], 10);
    assert_eq!(
        r["joins_unconfirmed"], 0,
        "hydration seeded through Kafka: {r}"
    );
    assert_eq!(r["events_injected"], 50);
    assert_eq!(r["received_deliveries"], 500, "{r}");
    assert_eq!(r["missing_deliveries"], 0);
    assert!(r["inject_request"]["count"].as_u64().unwrap() > 0, "{r}");
    // The probe consumer saw every record on the broker, with the gateway's max wait.
    assert_eq!(r["kafka_probe"]["count"], 50, "{r}");
    assert_eq!(r["kafka_probe_max_wait_ms"], 20);
    assert_eq!(r["kafka_probe_errors"], 0);
    assert!(r["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn spawn_kafka_runs_the_slow_scenario_in_kafka_mode() {
    let script = kafka_script();
    let mut args = vec!["--spawn-kafka", "--kafka-script", &script];
    args.extend(["--fetch-max-wait", "10ms"]);
    args.extend([
        "slow",
        "--clients",
        "10",
        "--rate",
        "40",
        "--duration",
        "1",
        "--slow-share",
        "0.5",
    ]);
    let r = run_loadgen(&args);
    assert_eq!(r["scenario"], "slow");
    assert_eq!(r["injection"], "kafka", "{r}");
    assert_eq!(r["clients_slow"], 5);
    assert_eq!(r["expected_deliveries"], 200, "{r}");
    assert_eq!(r["received_deliveries"], 200, "{r}");
    assert!(
        r["broker_cpu_pct_avg"].as_f64().is_some(),
        "the spawned broker is sampled: {r}"
    );
}
