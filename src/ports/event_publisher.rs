//! `EventPublisher`: appends records to event topics as a domain service would produce them.
//! Only the in-process bus of embedded mode offers it, for the admin hook (`admin.publish`)
//! that tests and benchmarks inject events through.

/// Produces event records, as the domain services do.
pub trait EventPublisher: Send + Sync {
    /// Appends a record (`None`: a tombstone) to `topic`, in the partition the domain
    /// services' partitioner (Kafka's own murmur2) picks for `key`.
    fn publish(&self, topic: &str, key: Option<&str>, value: Option<&[u8]>);
}
