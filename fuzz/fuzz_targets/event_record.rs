//! Event records as the consumer reads them from Kafka (or the embedded bus): any topic of the
//! gateway's (or another), any value or none, validated and routed; then the records of one
//! input, as one batch, conflated as under overload. Nothing may panic.
#![no_main]

use flux_bff::domain::{conflate, route, topics};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut batch = Vec::new();
    // Records are separated by 0xff, a byte no UTF-8 text holds; the first byte of each picks
    // the topic, the rest is the value (none at all when it is empty and the byte's top bit
    // is set: a tombstone).
    for record in data.split(|b| *b == 0xff) {
        let Some((&pick, value)) = record.split_first() else {
            continue;
        };
        let topic = topics::EVENT_TOPICS
            .get(usize::from(pick & 0x7f) % (topics::EVENT_TOPICS.len() + 1))
            .copied()
            .unwrap_or("not.a.flux.topic");
        let value = (!value.is_empty() || pick & 0x80 == 0).then_some(value);
        if let Ok(delivery) = route(topic, value) {
            batch.push(delivery);
        }
    }
    conflate(&mut batch);
});
