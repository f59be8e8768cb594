use crate::{
    backoff::{Backoff, BackoffConfig, ErrorOrThrottle},
    client::error::{Error, RequestContext, Result},
    connection::{
        BrokerCache, BrokerCacheGeneration, BrokerConnection, BrokerConnector, MessengerTransport,
        MetadataLookupMode,
    },
    messenger::RequestError,
    protocol::{
        error::Error as ProtocolError,
        messages::{
            DeleteRecordsRequest, DeleteRecordsResponse, DeleteRequestPartition,
            DeleteRequestTopic, DeleteResponsePartition, FetchRequest, FetchRequestPartition,
            FetchRequestTopic, FetchResponse, FetchResponsePartition, IsolationLevel,
            ListOffsetsRequest, ListOffsetsRequestPartition, ListOffsetsRequestTopic,
            ListOffsetsResponse, ListOffsetsResponsePartition, NORMAL_CONSUMER, ProduceRequest,
            ProduceRequestPartitionData, ProduceRequestTopicData, ProduceResponse,
        },
        primitives::*,
        record::{Record as ProtocolRecord, *},
    },
    record::{Record, RecordAndOffset},
    throttle::maybe_throttle,
    validation::ExactlyOne,
};
use chrono::{DateTime, Utc};
use std::{
    ops::{ControlFlow, Deref, Range},
    sync::Arc,
};
use tokio::sync::Mutex;
use tracing::{debug, error, info};

use super::{error::ServerErrorResponse, metadata_cache::MetadataCacheGeneration};

/// How strongly a [`PartitionClient`] is bound to a partition.
///
/// Under some circumstances and broker implementations, you might face a [`ProtocolError::UnknownTopicOrPartition`]
/// for nearly all operations directly after topic/partition creation. Since the Kafka protocol offers no (at least
/// to our knowledge) way to differentiate between "a topic/partition actually does not exist" and "our multiverse
/// split brain is not synced up yet", we can only offer you a manual way to wait for topic existence.
///
/// We offer the following ways to deal with this:
///
/// - Use a [`Error`](Self::Error). All other methods (including the creation of a [`PartitionClient`]) may produce
///   sporadic [`ProtocolError::UnknownTopicOrPartition`] errors.
/// - Use a [`Retry`](Self::Error) which assumes a partition exists and retries [`ProtocolError::UnknownTopicOrPartition`]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownTopicHandling {
    /// When a [`ProtocolError::UnknownTopicOrPartition`] is returned by Kafka,
    /// it is passed up to the user to handle.
    ///
    /// These errors may occur spuriously.
    Error,

    /// Always retry operations that return a
    /// [`ProtocolError::UnknownTopicOrPartition`], until the operation succeeds
    /// or a different error is returned.
    ///
    /// This may unpredictably increase operation latency.
    Retry,
}

/// Compression of records.
///
/// This is only relevant for [produce requests](PartitionClient::produce). There the client compresses the records.
///
/// For [fetch requests](PartitionClient::fetch_records) we have to accept a message as it exists, i.e. how it was
/// originally compressed. The broker will NOT change the data compression based on our request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    #[default]
    NoCompression,
    #[cfg(feature = "compression-gzip")]
    Gzip,
    #[cfg(feature = "compression-lz4")]
    Lz4,
    #[cfg(feature = "compression-snappy")]
    Snappy,
    #[cfg(feature = "compression-zstd")]
    Zstd,
}

/// Which type of offset should be requested by [`PartitionClient::get_offset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetAt {
    /// Earliest existing record.
    ///
    /// This is NOT the earliest produced record but the earliest record that is still kept, i.e. the offset might
    /// change if records are pruned by Kafka (retention policy) or if the are deleted.
    Earliest,

    /// The latest existing record.
    Latest,

    /// Timestamp
    ///
    /// The Kafka API supports querying an offset based on a timestamp, but the behavior seems to be
    /// semi-defined, unintuitive (even within Apache Kafka) and inconsistent between Apache Kafka and Redpanda. Mostly it
    /// offers timestamp based querying with millisecond precision.
    Timestamp(DateTime<Utc>),
}

#[derive(Debug)]
struct CurrentBroker {
    broker: Option<BrokerConnection>,
    gen_broker: BrokerCacheGeneration,
    gen_leader_from_arbitrary: Option<MetadataCacheGeneration>,
    gen_leader_from_self: Option<MetadataCacheGeneration>,
}

/// Many operations must be performed on the leader for a partition
///
/// Additionally a partition is the unit of concurrency within Kafka
///
/// As such a [`PartitionClient`] is a dedicated connection to the broker that
/// is the leader for a given partition.
///
/// In the event of a leadership change, [`PartitionClient`] will transparently
/// handle migrating to the new broker
///
pub struct PartitionClient {
    topic: String,
    partition: i32,
    brokers: Arc<BrokerConnector>,

    backoff_config: Arc<BackoffConfig>,

    /// Current broker connection if any
    current_broker: Mutex<CurrentBroker>,

    unknown_topic_handling: UnknownTopicHandling,
}

impl std::fmt::Debug for PartitionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartitionClient({}:{})", self.topic, self.partition)
    }
}

impl PartitionClient {
    pub(super) async fn new(
        topic: String,
        partition: i32,
        brokers: Arc<BrokerConnector>,
        unknown_topic_handling: UnknownTopicHandling,
        backoff_config: Arc<BackoffConfig>,
    ) -> Result<Self> {
        let p = Self {
            topic,
            partition,
            brokers: Arc::clone(&brokers),
            backoff_config,
            current_broker: Mutex::new(CurrentBroker {
                broker: None,
                gen_broker: BrokerCacheGeneration::START,
                gen_leader_from_arbitrary: None,
                gen_leader_from_self: None,
            }),
            unknown_topic_handling,
        };

        // Force discover and establish a cached connection to the leader
        let scope = &p;
        maybe_retry(
            &p.backoff_config,
            p.unknown_topic_handling,
            &*brokers,
            "leader_detection",
            || async move {
                scope
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                Ok(())
            },
        )
        .await?;

        Ok(p)
    }

    /// Topic
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Partition
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Produce a batch of records to the partition
    pub async fn produce(
        &self,
        records: Vec<Record>,
        compression: Compression,
    ) -> Result<Vec<i64>> {
        // skip request entirely if `records` is empty
        if records.is_empty() {
            return Ok(vec![]);
        }

        let n = records.len() as i64;
        let request = &build_produce_request(self.partition, &self.topic, records, compression);

        maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "produce",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(&request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(response.throttle_time_ms)?;
                process_produce_response(self.partition, &self.topic, n, response)
                    .map_err(|e| ErrorOrThrottle::Error((e, Some(r#gen))))
            },
        )
        .await
    }

    /// Fetch `bytes` bytes of record data starting at sequence number `offset`
    ///
    /// Returns the records, and the current high watermark.
    ///
    ///
    /// # Error Handling
    /// Fetching records outside the range known the to broker (marked by low and high watermark) will lead to a
    /// [`ServerError`](Error::ServerError) with [`OffsetOutOfRange`](ProtocolError::OffsetOutOfRange). You may use
    /// [`get_offset`](Self::get_offset) to determine the offset range.
    pub async fn fetch_records(
        &self,
        offset: i64,
        bytes: Range<i32>,
        max_wait_ms: i32,
    ) -> Result<(Vec<RecordAndOffset>, i64)> {
        let request = &build_fetch_request(offset, bytes, max_wait_ms, self.partition, &self.topic);

        let partition = maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "fetch_records",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(&request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(response.throttle_time_ms)?;
                process_fetch_response(self.partition, &self.topic, response, offset)
                    .map_err(|e| ErrorOrThrottle::Error((e, Some(r#gen))))
            },
        )
        .await?;

        let records = extract_records(partition.records.0, offset)?;

        Ok((records, partition.high_watermark.0))
    }

    /// flux-bff patch: fetches like [`fetch_records`](Self::fetch_records) and also tells where
    /// the next fetch starts and what was passed without being returned (see
    /// [`FetchedRecords`]). A batch that cannot be decoded does not fail the fetch.
    pub async fn fetch(
        &self,
        offset: i64,
        bytes: Range<i32>,
        max_wait_ms: i32,
    ) -> Result<FetchedRecords> {
        let request = &build_fetch_request(offset, bytes, max_wait_ms, self.partition, &self.topic);

        let partition = maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "fetch_records",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(&request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(response.throttle_time_ms)?;
                process_fetch_response(self.partition, &self.topic, response, offset)
                    .map_err(|e| ErrorOrThrottle::Error((e, Some(r#gen))))
            },
        )
        .await?;

        fetched_records(partition, offset)
    }

    /// Get offset for this partition.
    ///
    /// Note that the value returned by this method should be considered stale data, since:
    ///
    /// - **[`OffsetAt::Earliest`]:** Might be change at any time due to the Kafka retention policy or by
    ///   [deleting records](Self::delete_records).
    /// - **[`OffsetAt::Latest`]:** Might be change at any time by [producing records](Self::produce).
    pub async fn get_offset(&self, at: OffsetAt) -> Result<i64> {
        let request = &build_list_offsets_request(self.partition, &self.topic, at);

        let partition = maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "get_offset",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(&request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(response.throttle_time_ms)?;
                process_list_offsets_response(self.partition, &self.topic, response)
                    .map_err(|e| ErrorOrThrottle::Error((e, Some(r#gen))))
            },
        )
        .await?;

        extract_offset(partition)
    }

    /// Delete records whose offset is smaller than the given offset.
    ///
    /// # Supported Brokers
    /// Currently this is only supported by Apache Kafka but NOT by Redpanda, see
    /// <https://github.com/redpanda-data/redpanda/issues/1016>.
    pub async fn delete_records(&self, offset: i64, timeout_ms: i32) -> Result<()> {
        let request =
            &build_delete_records_request(offset, timeout_ms, &self.topic, self.partition);

        maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "delete_records",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(&request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(Some(response.throttle_time_ms))?;
                process_delete_records_response(&self.topic, self.partition, response)
                    .map_err(|e| ErrorOrThrottle::Error((e, Some(r#gen))))
            },
        )
        .await?;

        Ok(())
    }

    /// Retrieve the broker ID of the partition leader
    async fn get_leader(
        &self,
        metadata_mode: MetadataLookupMode,
    ) -> Result<(i32, Option<MetadataCacheGeneration>)> {
        let (metadata, r#gen) = self
            .brokers
            .request_metadata(&metadata_mode, Some(vec![self.topic.clone()]))
            .await?;

        let topic = metadata
            .topics
            .exactly_one()
            .map_err(Error::exactly_one_topic)?;

        if topic.name.0 != self.topic {
            return Err(Error::InvalidResponse(format!(
                "Expected metadata for topic \"{}\" got \"{}\"",
                self.topic, topic.name.0
            )));
        }

        if let Some(e) = topic.error {
            // TODO: Add retry logic
            return Err(Error::ServerError {
                protocol_error: e,
                error_message: None,
                request: RequestContext::Topic(self.topic.clone()),
                response: None,
                is_virtual: false,
            });
        }

        let partition = topic
            .partitions
            .iter()
            .find(|p| p.partition_index.0 == self.partition)
            .ok_or_else(|| {
                Error::InvalidResponse(format!(
                    "Could not find metadata for partition {} in topic \"{}\"",
                    self.partition, self.topic
                ))
            })?;

        if let Some(e) = partition.error {
            // TODO: Add retry logic
            return Err(Error::ServerError {
                protocol_error: e,
                error_message: None,
                request: RequestContext::Partition(self.topic.clone(), self.partition),
                response: None,
                is_virtual: false,
            });
        }

        if partition.leader_id.0 == -1 {
            return Err(Error::ServerError {
                protocol_error: ProtocolError::LeaderNotAvailable,
                error_message: None,
                request: RequestContext::Partition(self.topic.clone(), self.partition),
                response: None,
                is_virtual: true,
            });
        }

        info!(
            topic=%self.topic,
            partition=%self.partition,
            leader=partition.leader_id.0,
            %metadata_mode,
            "Detected leader",
        );
        Ok((partition.leader_id.0, r#gen))
    }
}

/// Caches the partition leader broker.
impl BrokerCache for &PartitionClient {
    type R = MessengerTransport;
    type E = Error;

    async fn get(&self) -> Result<(Arc<Self::R>, BrokerCacheGeneration)> {
        let mut current_broker = self.current_broker.lock().await;
        if let Some(broker) = &current_broker.broker {
            return Ok((Arc::clone(broker), current_broker.gen_broker));
        }

        info!(
            topic=%self.topic,
            partition=%self.partition,
            "Creating new partition-specific broker connection",
        );

        // Perform a request to fetch the topic metadata to determine the
        // current leader.
        //
        // Accept a cached metadata entry as a response because:
        //   * If the leader is offline, the connection call below fails and the cache is invalidated - the next call
        //     will cause the cache to be re-populate with a fresh entry.
        //   * A subsequent query is performed against the leader that does not use the cached entry - this validates
        //     the correctness of the cached entry.
        //
        let (leader, gen_leader_from_arbitrary) =
            self.get_leader(MetadataLookupMode::CachedArbitrary).await?;
        let broker = match self.brokers.connect(leader).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => {
                if let Some(r#gen) = gen_leader_from_arbitrary {
                    self.brokers.invalidate_metadata_cache(
                        "partition client: broker that is leader is unknown",
                        r#gen,
                    );
                }
                Err(Error::InvalidResponse(format!(
                    "Partition leader {} not found in metadata response",
                    leader
                )))
            }
            Err(e) => {
                if let Some(r#gen) = gen_leader_from_arbitrary {
                    self.brokers.invalidate_metadata_cache(
                        "partition client: error connecting to partition leader",
                        r#gen,
                    );
                }
                Err(e.into())
            }
        }?;

        // Check if the chosen leader also thinks it is the leader.
        //
        // For Kafka (+ Zookeeper) this seems to be required if we don't want to blindly retry `UnknownTopicOrPartition`
        // that happen after we connect to a leader (as advised by another broker) which doesn't know about its assigned
        // partition yet. The metadata query below seems to result in an LeaderNotAvailable in this case and is retried
        // by the layer above.
        //
        // This does not seem to be required for redpanda.
        //
        // Because this check requires the most up-to-date metadata from a specific broker, do not accept a cached
        // metadata response.
        let (leader_self, gen_leader_from_self) = self
            .get_leader(MetadataLookupMode::SpecificBroker(Arc::clone(&broker)))
            .await?;
        if leader != leader_self {
            if let Some(r#gen) = gen_leader_from_self {
                // The cached metadata identified an incorrect leader - it is stale and should be refreshed.
                self.brokers.invalidate_metadata_cache(
                    "partition client: broker that should be leader does treat itself as a leader",
                    r#gen,
                );
            }

            // this might happen if the leader changed after we got the hint from a arbitrary broker and this specific
            // metadata call.
            return Err(Error::ServerError {
                protocol_error: ProtocolError::NotLeaderOrFollower,
                error_message: None,
                request: RequestContext::Partition(self.topic.clone(), self.partition),
                response: Some(ServerErrorResponse::LeaderForward {
                    broker: leader,
                    new_leader: leader_self,
                }),
                is_virtual: true,
            });
        }

        *current_broker = CurrentBroker {
            broker: Some(Arc::clone(&broker)),
            gen_broker: current_broker.gen_broker.bump(),
            gen_leader_from_arbitrary,
            gen_leader_from_self,
        };

        info!(
            topic=%self.topic,
            partition=%self.partition,
            leader,
            "Created new partition-specific broker connection",
        );
        Ok((broker, current_broker.gen_broker))
    }

    async fn invalidate(&self, reason: &'static str, r#gen: BrokerCacheGeneration) {
        let mut current_broker = self.current_broker.lock().await;

        if current_broker.gen_broker != r#gen {
            // stale request
            debug!(
                reason,
                current_gen = current_broker.gen_broker.get(),
                request_gen = r#gen.get(),
                "stale invalidation request for arbitrary broker cache",
            );
            return;
        }

        info!(
            topic = self.topic.deref(),
            partition = self.partition,
            reason,
            "Invaliding cached leader",
        );

        if let Some(r#gen) = current_broker.gen_leader_from_arbitrary {
            self.brokers.invalidate_metadata_cache(reason, r#gen);
        }
        if let Some(r#gen) = current_broker.gen_leader_from_self {
            self.brokers.invalidate_metadata_cache(reason, r#gen);
        }

        current_broker.broker = None
    }
}

/// Takes a `request_name` and a function yielding a fallible future
/// and handles certain classes of error
async fn maybe_retry<B, R, F, T>(
    backoff_config: &BackoffConfig,
    unknown_topic_handling: UnknownTopicHandling,
    broker_cache: B,
    request_name: &str,
    f: R,
) -> Result<T>
where
    B: BrokerCache,
    R: (Fn() -> F) + Send + Sync,
    F: std::future::Future<
            Output = Result<T, ErrorOrThrottle<(Error, Option<BrokerCacheGeneration>)>>,
        > + Send,
{
    let mut backoff = Backoff::new(backoff_config);

    backoff
        .retry_with_backoff(request_name, || async {
            let (error, cache_gen) = match f().await {
                Ok(v) => {
                    return ControlFlow::Break(Ok(v));
                }
                Err(ErrorOrThrottle::Throttle(throttle)) => {
                    return ControlFlow::Continue(ErrorOrThrottle::Throttle(throttle));
                }
                Err(ErrorOrThrottle::Error(e)) => e,
            };

            let retry = match error {
                Error::Request(RequestError::Poisoned(_) | RequestError::IO(_))
                | Error::Connection(_) => {
                    if let Some(cache_gen) = cache_gen {
                        broker_cache
                            .invalidate("partition client: connection broken", cache_gen)
                            .await;
                    }
                    true
                }
                Error::ServerError {
                    protocol_error:
                        ProtocolError::InvalidReplicationFactor
                        | ProtocolError::LeaderNotAvailable
                        | ProtocolError::OffsetNotAvailable,
                    ..
                } => true,
                Error::ServerError {
                    protocol_error: ProtocolError::NotLeaderOrFollower,
                    ..
                } => {
                    if let Some(cache_gen) = cache_gen {
                        broker_cache
                            .invalidate(
                                "partition client: server error: not leader or follower",
                                cache_gen,
                            )
                            .await;
                    }
                    true
                }
                Error::ServerError {
                    protocol_error: ProtocolError::UnknownTopicOrPartition,
                    ..
                } => {
                    if let Some(cache_gen) = cache_gen {
                        broker_cache
                            .invalidate(
                                "partition client: server error: unknown topic or partition",
                                cache_gen,
                            )
                            .await;
                    }
                    unknown_topic_handling == UnknownTopicHandling::Retry
                }
                _ => false,
            };

            if retry {
                ControlFlow::Continue(ErrorOrThrottle::Error(error))
            } else {
                error!(
                    e=%error,
                    request_name,
                    "request encountered fatal error",
                );
                ControlFlow::Break(Err(error))
            }
        })
        .await
        .map_err(Error::RetryFailed)?
}

fn build_produce_request(
    partition: i32,
    topic: &str,
    records: Vec<Record>,
    compression: Compression,
) -> ProduceRequest {
    let n = records.len() as i32;

    // TODO: Retry on failure

    let first_timestamp = records.first().unwrap().timestamp;
    let mut max_timestamp = first_timestamp;

    let records = records
        .into_iter()
        .enumerate()
        .map(|(offset_delta, record)| {
            max_timestamp = max_timestamp.max(record.timestamp);

            ProtocolRecord {
                key: record.key,
                value: record.value,
                timestamp_delta: (record.timestamp - first_timestamp).num_milliseconds(),
                offset_delta: offset_delta as i32,
                headers: record
                    .headers
                    .into_iter()
                    .map(|(key, value)| RecordHeader { key, value })
                    .collect(),
            }
        })
        .collect();

    let record_batch = ProduceRequestPartitionData {
        index: Int32(partition),
        records: Records(vec![RecordBatch {
            base_offset: 0,
            partition_leader_epoch: 0,
            last_offset_delta: n - 1,
            is_transactional: false,
            base_sequence: -1,
            compression: match compression {
                Compression::NoCompression => RecordBatchCompression::NoCompression,
                #[cfg(feature = "compression-gzip")]
                Compression::Gzip => RecordBatchCompression::Gzip,
                #[cfg(feature = "compression-lz4")]
                Compression::Lz4 => RecordBatchCompression::Lz4,
                #[cfg(feature = "compression-snappy")]
                Compression::Snappy => RecordBatchCompression::Snappy,
                #[cfg(feature = "compression-zstd")]
                Compression::Zstd => RecordBatchCompression::Zstd,
            },
            timestamp_type: RecordBatchTimestampType::CreateTime,
            producer_id: -1,
            producer_epoch: -1,
            first_timestamp: first_timestamp.timestamp_millis(),
            max_timestamp: max_timestamp.timestamp_millis(),
            records: ControlBatchOrRecords::Records(records),
        }]),
    };

    ProduceRequest {
        transactional_id: crate::protocol::primitives::NullableString(None),
        acks: Int16(-1),
        timeout_ms: Int32(30_000),
        topic_data: vec![ProduceRequestTopicData {
            name: String_(topic.to_string()),
            partition_data: vec![record_batch],
        }],
    }
}

fn process_produce_response(
    partition: i32,
    topic: &str,
    num_records: i64,
    response: ProduceResponse,
) -> Result<Vec<i64>> {
    let response = response
        .responses
        .exactly_one()
        .map_err(Error::exactly_one_topic)?;

    if response.name.0 != topic {
        return Err(Error::InvalidResponse(format!(
            "Expected write for topic \"{}\" got \"{}\"",
            topic, response.name.0,
        )));
    }

    let response = response
        .partition_responses
        .exactly_one()
        .map_err(Error::exactly_one_partition)?;

    if response.index.0 != partition {
        return Err(Error::InvalidResponse(format!(
            "Expected partition {} for topic \"{}\" got {}",
            partition, topic, response.index.0,
        )));
    }

    match response.error {
        Some(e) => Err(Error::ServerError {
            protocol_error: e,
            error_message: None,
            request: RequestContext::Partition(topic.to_owned(), partition),
            response: None,
            is_virtual: false,
        }),
        None => Ok((0..num_records)
            .map(|x| x + response.base_offset.0)
            .collect()),
    }
}

fn build_fetch_request(
    offset: i64,
    bytes: Range<i32>,
    max_wait_ms: i32,
    partition: i32,
    topic: &str,
) -> FetchRequest {
    FetchRequest {
        replica_id: NORMAL_CONSUMER,
        max_wait_ms: Int32(max_wait_ms),
        min_bytes: Int32(bytes.start),
        max_bytes: Some(Int32(bytes.end.saturating_sub(1))),
        isolation_level: Some(IsolationLevel::ReadCommitted),
        topics: vec![FetchRequestTopic {
            topic: String_(topic.to_string()),
            partitions: vec![FetchRequestPartition {
                partition: Int32(partition),
                fetch_offset: Int64(offset),
                partition_max_bytes: Int32(bytes.end.saturating_sub(1)),
            }],
        }],
    }
}

fn process_fetch_response(
    partition: i32,
    topic: &str,
    response: FetchResponse,
    request_offset: i64,
) -> Result<FetchResponsePartition> {
    let response_topic = response
        .responses
        .exactly_one()
        .map_err(Error::exactly_one_topic)?;

    if response_topic.topic.0 != topic {
        return Err(Error::InvalidResponse(format!(
            "Expected data for topic '{}' but got data for topic '{}'",
            topic, response_topic.topic.0
        )));
    }

    let response_partition = response_topic
        .partitions
        .exactly_one()
        .map_err(Error::exactly_one_partition)?;

    if response_partition.partition_index.0 != partition {
        return Err(Error::InvalidResponse(format!(
            "Expected data for partition {} but got data for partition {}",
            partition, response_partition.partition_index.0
        )));
    }

    if let Some(err) = response_partition.error_code {
        return Err(Error::ServerError {
            protocol_error: err,
            error_message: None,
            request: RequestContext::Fetch {
                topic_name: topic.to_owned(),
                partition_id: partition,
                offset: request_offset,
            },
            response: Some(ServerErrorResponse::PartitionFetchState {
                high_watermark: response_partition.high_watermark.0,
                last_stable_offset: response_partition.last_stable_offset.map(|x| x.0),
            }),
            is_virtual: false,
        });
    }

    Ok(response_partition)
}

/// flux-bff patch: what [`PartitionClient::fetch`] read.
#[derive(Debug)]
pub struct FetchedRecords {
    /// The records at or after the requested offset, in offset order: neither transaction
    /// markers nor records of aborted transactions.
    pub records: Vec<RecordAndOffset>,
    /// The offset after the last batch the response held whole, never below the requested
    /// offset and never past the last stable offset: where the next fetch starts. Beyond the
    /// last record returned when the response ended in batches that hold nothing to return
    /// (transaction markers, aborted transactions, undecodable batches).
    pub next_offset: i64,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// The partition's last stable offset (no transaction is open below it), when the broker
    /// sends it (fetch v4+); a read-committed fetch returns nothing at or past it.
    pub last_stable_offset: Option<i64>,
    /// The batches that were passed because their records cannot be decoded.
    pub undecodable: Vec<UndecodableBatch>,
}

/// flux-bff patch: a record batch whose records cannot be decoded (see
/// [`ControlBatchOrRecords::Undecodable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecodableBatch {
    pub first_offset: i64,
    pub last_offset: i64,
    pub cause: String,
}

/// The records of a read-committed fetch response, without those of aborted transactions
/// (as Kafka's Java consumer filters them: a transactional batch of a producer with an aborted
/// transaction starting at or before the batch is dropped, until that producer's abort
/// marker), nor any at or past the last stable offset.
fn fetched_records(
    partition: FetchResponsePartition,
    request_offset: i64,
) -> Result<FetchedRecords> {
    let last_stable_offset = partition.last_stable_offset.map(|o| o.0);
    let mut aborted = partition.aborted_transactions;
    aborted.sort_by_key(|t| t.first_offset.0);
    let mut aborted = aborted.into_iter().peekable();
    let mut aborting = std::collections::HashSet::new();
    let mut next_offset = request_offset;
    let mut undecodable = vec![];
    let mut batches = Vec::with_capacity(partition.records.0.len());
    for mut batch in partition.records.0 {
        let last_offset = batch.base_offset + i64::from(batch.last_offset_delta);
        if last_stable_offset.is_some_and(|stable| last_offset >= stable) {
            // Undecided yet (a read-committed fetch should not return it): read it later.
            break;
        }
        next_offset = next_offset.max(last_offset + 1);
        while let Some(t) = aborted.next_if(|t| t.first_offset.0 <= last_offset) {
            aborting.insert(t.producer_id.0);
        }
        match &mut batch.records {
            ControlBatchOrRecords::ControlBatch(ControlBatchRecord::Abort) => {
                aborting.remove(&batch.producer_id);
            }
            ControlBatchOrRecords::ControlBatch(ControlBatchRecord::Commit) => {}
            ControlBatchOrRecords::Undecodable(cause) => {
                if last_offset >= request_offset {
                    undecodable.push(UndecodableBatch {
                        first_offset: batch.base_offset,
                        last_offset,
                        cause: std::mem::take(cause),
                    });
                }
            }
            ControlBatchOrRecords::Records(_) => {
                if !(batch.is_transactional && aborting.contains(&batch.producer_id)) {
                    batches.push(batch);
                }
            }
        }
    }
    Ok(FetchedRecords {
        records: extract_records(batches, request_offset)?,
        next_offset,
        high_watermark: partition.high_watermark.0,
        last_stable_offset,
        undecodable,
    })
}

fn extract_records(
    partition_records: Vec<RecordBatch>,
    request_offset: i64,
) -> Result<Vec<RecordAndOffset>> {
    let mut records = vec![];

    for batch in partition_records {
        match batch.records {
            ControlBatchOrRecords::ControlBatch(_) => {
                // ignore
            }
            // flux-bff patch: as before the patch, such a batch fails the fetch here
            ControlBatchOrRecords::Undecodable(cause) => {
                return Err(Error::InvalidResponse(format!(
                    "Cannot decode the record batch at offset {}: {cause}",
                    batch.base_offset
                )));
            }
            ControlBatchOrRecords::Records(protocol_records) => {
                records.reserve(protocol_records.len());

                for record in protocol_records {
                    let offset = batch.base_offset + record.offset_delta as i64;
                    if offset < request_offset {
                        // Kafka does not split record batches on the server side, so we need to do this filtering on
                        // the client side
                        continue;
                    }

                    // flux-bff patch: never fails the fetch; LogAppendTime read from the batch
                    let timestamp = record_timestamp(
                        batch.timestamp_type,
                        batch.first_timestamp,
                        batch.max_timestamp,
                        record.timestamp_delta,
                    );

                    records.push(RecordAndOffset {
                        record: Record {
                            key: record.key,
                            value: record.value,
                            headers: record
                                .headers
                                .into_iter()
                                .map(|header| (header.key, header.value))
                                .collect(),
                            timestamp,
                        },
                        offset,
                    })
                }
            }
        }
    }

    Ok(records)
}

/// flux-bff patch: Kafka's "no timestamp" (`RecordBatch.NO_TIMESTAMP`, -1 ms).
const NO_TIMESTAMP: i64 = -1;

/// flux-bff patch: the timestamp of a record, as Kafka's Java client reads it
/// (`DefaultRecordBatch.RecordIterator`, `DefaultRecord.readFrom`): the batch's max timestamp
/// for a `LogAppendTime` batch (the broker rewrites only that field), else the batch's first
/// timestamp plus the record's delta. A timestamp whose sum overflows or that chrono cannot
/// represent (a producer that wrote nanoseconds) is read as Kafka's "no timestamp" (-1 ms)
/// instead of failing the whole fetch: Kafka accepts such timestamps, so a failed fetch would
/// stop the partition on that record for good.
fn record_timestamp(
    timestamp_type: RecordBatchTimestampType,
    first_timestamp: i64,
    max_timestamp: i64,
    timestamp_delta: i64,
) -> DateTime<Utc> {
    let millis = match timestamp_type {
        RecordBatchTimestampType::LogAppendTime => Some(max_timestamp),
        RecordBatchTimestampType::CreateTime => first_timestamp.checked_add(timestamp_delta),
    };
    millis
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(|| {
            DateTime::from_timestamp_millis(NO_TIMESTAMP).expect("-1 ms is within chrono's range")
        })
}

fn build_list_offsets_request(partition: i32, topic: &str, at: OffsetAt) -> ListOffsetsRequest {
    let timestamp = match at {
        OffsetAt::Earliest => -2,
        OffsetAt::Latest => -1,
        OffsetAt::Timestamp(ts) => ts.timestamp_millis(),
    };

    ListOffsetsRequest {
        replica_id: NORMAL_CONSUMER,
        isolation_level: Some(IsolationLevel::ReadCommitted),
        topics: vec![ListOffsetsRequestTopic {
            name: String_(topic.to_owned()),
            partitions: vec![ListOffsetsRequestPartition {
                partition_index: Int32(partition),
                timestamp: Int64(timestamp),
                max_num_offsets: Some(Int32(1)),
            }],
        }],
    }
}

fn process_list_offsets_response(
    partition: i32,
    topic: &str,
    response: ListOffsetsResponse,
) -> Result<ListOffsetsResponsePartition> {
    let response_topic = response
        .topics
        .exactly_one()
        .map_err(Error::exactly_one_topic)?;

    if response_topic.name.0 != topic {
        return Err(Error::InvalidResponse(format!(
            "Expected data for topic '{}' but got data for topic '{}'",
            topic, response_topic.name.0
        )));
    }

    let response_partition = response_topic
        .partitions
        .exactly_one()
        .map_err(Error::exactly_one_partition)?;

    if response_partition.partition_index.0 != partition {
        return Err(Error::InvalidResponse(format!(
            "Expected data for partition {} but got data for partition {}",
            partition, response_partition.partition_index.0
        )));
    }

    match response_partition.error_code {
        Some(err) => Err(Error::ServerError {
            protocol_error: err,
            error_message: None,
            request: RequestContext::Partition(topic.to_owned(), partition),
            response: None,
            is_virtual: false,
        }),
        None => Ok(response_partition),
    }
}

fn extract_offset(partition: ListOffsetsResponsePartition) -> Result<i64> {
    match (
        partition.old_style_offsets.as_ref(),
        partition.offset.as_ref(),
    ) {
        // old style
        (Some(offsets), None) => match offsets.0.as_ref() {
            Some(offsets) => match offsets.len() {
                1 => Ok(offsets[0].0),
                n => Err(Error::InvalidResponse(format!(
                    "Expected 1 offset to be returned but got {}",
                    n
                ))),
            },
            None => Err(Error::InvalidResponse(
                "Got NULL as offset array".to_owned(),
            )),
        },
        // new style
        (None, Some(offset)) => Ok(offset.0),
        _ => unreachable!(),
    }
}

fn build_delete_records_request(
    offset: i64,
    timeout_ms: i32,
    topic: &str,
    partition: i32,
) -> DeleteRecordsRequest {
    DeleteRecordsRequest {
        topics: vec![DeleteRequestTopic {
            name: String_(topic.to_string()),
            partitions: vec![DeleteRequestPartition {
                partition_index: Int32(partition),
                offset: Int64(offset),
                tagged_fields: None,
            }],
            tagged_fields: None,
        }],
        timeout_ms: Int32(timeout_ms),
        tagged_fields: None,
    }
}

fn process_delete_records_response(
    topic: &str,
    partition: i32,
    response: DeleteRecordsResponse,
) -> Result<DeleteResponsePartition> {
    let response_topic = response
        .topics
        .exactly_one()
        .map_err(Error::exactly_one_topic)?;

    if response_topic.name.0 != topic {
        return Err(Error::InvalidResponse(format!(
            "Expected data for topic '{}' but got data for topic '{}'",
            topic, response_topic.name.0
        )));
    }

    let response_partition = response_topic
        .partitions
        .exactly_one()
        .map_err(Error::exactly_one_partition)?;

    if response_partition.partition_index.0 != partition {
        return Err(Error::InvalidResponse(format!(
            "Expected data for partition {} but got data for partition {}",
            partition, response_partition.partition_index.0
        )));
    }

    match response_partition.error {
        Some(err) => Err(Error::ServerError {
            protocol_error: err,
            error_message: None,
            request: RequestContext::Partition(topic.to_owned(), partition),
            response: None,
            is_virtual: false,
        }),
        None => Ok(response_partition),
    }
}

// flux-bff patch: tests of `fetched_records`.
#[cfg(test)]
mod fetched_tests {
    use std::io::Cursor;

    use super::*;
    use crate::protocol::messages::FetchResponseAbortedTransaction;
    use crate::protocol::traits::{ReadType, WriteType};

    fn batch(base_offset: i64, values: &[&str]) -> RecordBatch {
        RecordBatch {
            base_offset,
            partition_leader_epoch: 0,
            last_offset_delta: i32::try_from(values.len()).unwrap() - 1,
            first_timestamp: 1_700_000_000_000,
            max_timestamp: 1_700_000_000_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: ControlBatchOrRecords::Records(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ProtocolRecord {
                        timestamp_delta: 0,
                        offset_delta: i32::try_from(i).unwrap(),
                        key: None,
                        value: Some(v.as_bytes().to_vec()),
                        headers: vec![],
                    })
                    .collect(),
            ),
            compression: RecordBatchCompression::NoCompression,
            is_transactional: false,
            timestamp_type: RecordBatchTimestampType::CreateTime,
        }
    }

    fn bytes(batch: &RecordBatch) -> Vec<u8> {
        let mut buf = vec![];
        batch.write(&mut buf).unwrap();
        buf
    }

    /// `batch` marked as compressed with `codec` while its records stay plain: the records
    /// cannot be decompressed, and the CRC is made to hold, as for a batch the broker
    /// accepted but this client cannot read.
    fn undecodable(batch: &RecordBatch, codec: u8) -> Vec<u8> {
        let mut buf = bytes(batch);
        // baseOffset 8, batchLength 4, partitionLeaderEpoch 4, magic 1, crc 4, attributes 2
        buf[22] |= codec;
        let crc = crc32c::crc32c(&buf[21..]);
        buf[17..21].copy_from_slice(&crc.to_be_bytes());
        buf
    }

    fn partition(batches: Vec<u8>) -> FetchResponsePartition {
        FetchResponsePartition {
            partition_index: Int32(0),
            error_code: None,
            high_watermark: Int64(100),
            last_stable_offset: Some(Int64(100)),
            aborted_transactions: vec![],
            records: Records::read(&mut Cursor::new({
                let mut framed = vec![];
                NullableBytes(Some(batches)).write(&mut framed).unwrap();
                framed
            }))
            .unwrap(),
        }
    }

    fn values(fetched: &FetchedRecords) -> Vec<(i64, String)> {
        fetched
            .records
            .iter()
            .map(|r| {
                let value = String::from_utf8(r.record.value.clone().unwrap()).unwrap();
                (r.offset, value)
            })
            .collect()
    }

    #[test]
    fn an_undecodable_batch_is_reported_and_stepped_over_and_the_next_one_is_read() {
        // lz4 (3) and zstd (4) headers do not match plain records; gzip (1) neither.
        for codec in [1, 3, 4] {
            let data = [
                bytes(&batch(10, &["a", "b"])),
                undecodable(&batch(12, &["c", "d", "e"]), codec),
                bytes(&batch(15, &["f"])),
            ]
            .concat();
            let fetched = fetched_records(partition(data), 11).unwrap();
            assert_eq!(values(&fetched), [(11, "b".into()), (15, "f".into())]);
            assert_eq!(fetched.next_offset, 16);
            assert_eq!(fetched.undecodable.len(), 1, "codec {codec}");
            assert_eq!(
                (
                    fetched.undecodable[0].first_offset,
                    fetched.undecodable[0].last_offset
                ),
                (12, 14)
            );
        }
    }

    #[test]
    fn a_response_ending_in_an_undecodable_batch_moves_the_next_offset_past_it() {
        let data = undecodable(&batch(12, &["c", "d", "e"]), 1);
        let fetched = fetched_records(partition(data), 12).unwrap();
        assert!(fetched.records.is_empty());
        assert_eq!(fetched.next_offset, 15);
        assert_eq!(fetched.undecodable.len(), 1);
    }

    fn transactional(mut batch: RecordBatch, producer_id: i64) -> RecordBatch {
        batch.producer_id = producer_id;
        batch.producer_epoch = 0;
        batch.is_transactional = true;
        batch
    }

    fn marker(offset: i64, producer_id: i64, record: ControlBatchRecord) -> RecordBatch {
        RecordBatch {
            records: ControlBatchOrRecords::ControlBatch(record),
            last_offset_delta: 0,
            ..transactional(batch(offset, &["-"]), producer_id)
        }
    }

    #[test]
    fn records_of_aborted_transactions_are_dropped_and_committed_ones_kept() {
        // Producer 1 aborts 0..=1 (marker at 3), producer 2 commits 2 (marker at 4),
        // producer 1 then commits 5 (marker at 6); 7 is not transactional.
        let data = [
            bytes(&transactional(batch(0, &["a0", "a1"]), 1)),
            bytes(&transactional(batch(2, &["c2"]), 2)),
            bytes(&marker(3, 1, ControlBatchRecord::Abort)),
            bytes(&marker(4, 2, ControlBatchRecord::Commit)),
            bytes(&transactional(batch(5, &["c5"]), 1)),
            bytes(&marker(6, 1, ControlBatchRecord::Commit)),
            bytes(&batch(7, &["n7"])),
        ]
        .concat();
        let mut response = partition(data);
        response.aborted_transactions = vec![FetchResponseAbortedTransaction {
            producer_id: Int64(1),
            first_offset: Int64(0),
        }];
        let fetched = fetched_records(response, 0).unwrap();
        assert_eq!(
            values(&fetched),
            [(2, "c2".into()), (5, "c5".into()), (7, "n7".into())]
        );
        assert_eq!(fetched.next_offset, 8);
    }

    #[test]
    fn nothing_at_or_past_the_last_stable_offset_is_returned_or_passed() {
        let data = [
            bytes(&batch(0, &["n0"])),
            bytes(&transactional(batch(1, &["open1", "open2"]), 3)),
        ]
        .concat();
        let mut response = partition(data);
        response.last_stable_offset = Some(Int64(1));
        let fetched = fetched_records(response, 0).unwrap();
        assert_eq!(values(&fetched), [(0, "n0".into())]);
        assert_eq!(fetched.next_offset, 1, "waits at the last stable offset");
    }

    #[test]
    fn a_response_ending_in_a_marker_moves_the_next_offset_past_it() {
        let data = [
            bytes(&transactional(batch(0, &["c0"]), 1)),
            bytes(&marker(1, 1, ControlBatchRecord::Commit)),
        ]
        .concat();
        let fetched = fetched_records(partition(data), 1).unwrap();
        assert!(fetched.records.is_empty());
        assert_eq!(fetched.next_offset, 2);
    }

    fn timestamps(fetched: &FetchedRecords) -> Vec<(i64, i64)> {
        fetched
            .records
            .iter()
            .map(|r| (r.offset, r.record.timestamp.timestamp_millis()))
            .collect()
    }

    #[test]
    fn a_timestamp_chrono_cannot_represent_is_read_as_no_timestamp_and_the_fetch_goes_on() {
        // A producer that wrote nanoseconds: far past chrono's range of some 262,000 years.
        let mut nanos = batch(10, &["nanos"]);
        nanos.first_timestamp = 1_700_000_000_000_000_000;
        nanos.max_timestamp = 1_700_000_000_000_000_000;
        let data = [bytes(&nanos), bytes(&batch(11, &["good"]))].concat();
        let fetched = fetched_records(partition(data), 10).unwrap();
        assert_eq!(
            values(&fetched),
            [(10, "nanos".into()), (11, "good".into())]
        );
        assert_eq!(
            timestamps(&fetched),
            [(10, NO_TIMESTAMP), (11, 1_700_000_000_000)]
        );
        assert_eq!(fetched.next_offset, 12);
    }

    #[test]
    fn a_timestamp_delta_that_overflows_is_read_as_no_timestamp_and_the_fetch_goes_on() {
        let mut overflowing = batch(10, &["overflow", "next"]);
        if let ControlBatchOrRecords::Records(records) = &mut overflowing.records {
            records[0].timestamp_delta = i64::MAX;
        }
        let data = [bytes(&overflowing), bytes(&batch(12, &["good"]))].concat();
        let fetched = fetched_records(partition(data), 10).unwrap();
        assert_eq!(
            values(&fetched),
            [
                (10, "overflow".into()),
                (11, "next".into()),
                (12, "good".into())
            ]
        );
        assert_eq!(
            timestamps(&fetched),
            [
                (10, NO_TIMESTAMP),
                (11, 1_700_000_000_000),
                (12, 1_700_000_000_000)
            ]
        );
    }

    #[test]
    fn the_records_of_a_log_append_time_batch_take_its_max_timestamp() {
        let mut appended = batch(10, &["a", "b"]);
        appended.timestamp_type = RecordBatchTimestampType::LogAppendTime;
        appended.first_timestamp = 1;
        appended.max_timestamp = 2000;
        if let ControlBatchOrRecords::Records(records) = &mut appended.records {
            records[1].timestamp_delta = 5;
        }
        let fetched = fetched_records(partition(bytes(&appended)), 10).unwrap();
        assert_eq!(timestamps(&fetched), [(10, 2000), (11, 2000)]);
    }

    #[test]
    fn a_batch_whose_crc_fails_still_fails_the_fetch() {
        let mut data = bytes(&batch(12, &["c"]));
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let mut framed = vec![];
        NullableBytes(Some(data)).write(&mut framed).unwrap();
        assert!(Records::read(&mut Cursor::new(framed)).is_err());
    }
}
