//! Snapshot writes off the real-time path: ingestion hands each write to one background
//! writer and goes on emitting; a slow or failing cache never delays a live push (D16).
//! Pending writes are conflated per key (the newest snapshot wins), and one writer keeps
//! them in order, so an older snapshot never overwrites a newer one.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::SnapshotWrite;
use crate::ports::SnapshotCache;

use super::metrics::SNAPSHOT_WRITES;

/// Hands snapshot writes to the background writer.
#[derive(Clone)]
pub struct SnapshotWriter {
    tx: mpsc::Sender<SnapshotWrite>,
}

impl SnapshotWriter {
    /// Starts the writer task; it drains what is queued and stops when `shutdown` fires and
    /// every handle was dropped.
    pub fn spawn(
        cache: Arc<dyn SnapshotCache>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(run(cache, rx, shutdown));
        (Self { tx }, task)
    }

    /// Queues a write; when the queue is full (the cache is stalled) the write is dropped
    /// and counted, never waited for.
    pub fn submit(&self, write: SnapshotWrite) {
        if self.tx.try_send(write).is_err() {
            metrics::counter!(SNAPSHOT_WRITES, "result" => "dropped").increment(1);
        }
    }
}

async fn run(
    cache: Arc<dyn SnapshotCache>,
    mut rx: mpsc::Receiver<SnapshotWrite>,
    shutdown: CancellationToken,
) {
    let mut pending: HashMap<&'static str, SnapshotWrite> = HashMap::new();
    loop {
        let first = tokio::select! {
            w = rx.recv() => w,
            () = shutdown.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        pending.insert(first.key.key, first);
        while let Ok(w) = rx.try_recv() {
            pending.insert(w.key.key, w);
        }
        for (_, w) in pending.drain() {
            let result = match cache.set(w.key.key, &w.value, w.key.ttl).await {
                Ok(()) => "ok",
                Err(e) => {
                    tracing::debug!(key = w.key.key, error = %e, "snapshot write failed");
                    "error"
                }
            };
            metrics::counter!(SNAPSHOT_WRITES, "key" => w.key.key, "result" => result).increment(1);
        }
    }
}
