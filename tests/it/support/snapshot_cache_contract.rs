//! The `SnapshotCache` contract, written once and run against every implementation (the
//! in-memory fake and the Valkey adapter), so that the fake cannot drift from the real thing.

#![allow(dead_code)] // each test binary uses a different part of it

use std::time::Duration;

use flux_bff::ports::SnapshotCache;

/// A key no other test (or earlier run against a long-lived server) uses.
pub fn unique_key(name: &str) -> String {
    format!("test:{name}:{}", uuid::Uuid::new_v4())
}

/// Every rule of the port, with real time (short TTLs and real sleeps).
pub async fn snapshot_cache_contract(cache: &dyn SnapshotCache) {
    values_round_trip(cache).await;
    an_unknown_key_is_none(cache).await;
    set_overwrites(cache).await;
    delete_removes_and_tolerates_absent_keys(cache).await;
    set_unless_same_is_atomic_under_concurrency(cache).await;
    set_unless_same_replaces_another_value(cache).await;
    delete_if_same_removes_only_that_value(cache).await;
    // The expiry checks sleep; run them side by side.
    tokio::join!(
        a_value_expires_after_its_ttl(cache),
        set_unless_same_refuses_the_same_value_until_it_expires(cache),
    );
}

pub async fn values_round_trip(cache: &dyn SnapshotCache) {
    let key = unique_key("round-trip");
    let value = r#"{"topGainers":[{"id":"btc","price":"65000.12"}],"name":"Zürich ✓","empty":""}"#;
    cache
        .set(&key, value, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some(value),
        "value round-trips"
    );

    let big = format!("[{}]", vec!["\"0123456789abcdef\""; 20_000].join(","));
    cache
        .set(&key, &big, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Some(big),
        "a 360 kB value round-trips"
    );
}

pub async fn an_unknown_key_is_none(cache: &dyn SnapshotCache) {
    assert_eq!(cache.get(&unique_key("unknown")).await.unwrap(), None);
}

pub async fn set_overwrites(cache: &dyn SnapshotCache) {
    let key = unique_key("overwrite");
    cache.set(&key, "1", Duration::from_secs(60)).await.unwrap();
    cache.set(&key, "2", Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("2"));
}

pub async fn delete_removes_and_tolerates_absent_keys(cache: &dyn SnapshotCache) {
    let key = unique_key("delete");
    cache.set(&key, "x", Duration::from_secs(60)).await.unwrap();
    cache.delete(&key).await.unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap(),
        None,
        "deleted key reads as None"
    );
    cache
        .delete(&key)
        .await
        .expect("deleting an absent key is fine");
    assert!(
        cache
            .set_unless_same(&key, "y", Duration::from_secs(60))
            .await
            .unwrap(),
        "a deleted key holds nothing for set_unless_same"
    );
}

pub async fn a_value_expires_after_its_ttl(cache: &dyn SnapshotCache) {
    let short = unique_key("ttl-short");
    let long = unique_key("ttl-long");
    cache
        .set(&short, "s", Duration::from_millis(300))
        .await
        .unwrap();
    cache
        .set(&long, "l", Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        cache.get(&short).await.unwrap().as_deref(),
        Some("s"),
        "alive before its ttl"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(cache.get(&short).await.unwrap(), None, "gone after its ttl");
    assert_eq!(
        cache.get(&long).await.unwrap().as_deref(),
        Some("l"),
        "a longer ttl is kept"
    );

    // Overwriting resets the ttl.
    let key = unique_key("ttl-reset");
    cache
        .set(&key, "a", Duration::from_millis(200))
        .await
        .unwrap();
    cache.set(&key, "b", Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some("b"),
        "set replaces the ttl"
    );
}

pub async fn set_unless_same_refuses_the_same_value_until_it_expires(cache: &dyn SnapshotCache) {
    let key = unique_key("same");
    let ttl = Duration::from_millis(1000);
    assert!(
        cache.set_unless_same(&key, "A", ttl).await.unwrap(),
        "absent: stored"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !cache.set_unless_same(&key, "A", ttl).await.unwrap(),
        "the same value: refused"
    );
    // The refusal did not renew the expiry: gone 1150 ms after the first write (a renewal
    // would have kept it until 1300 ms).
    tokio::time::sleep(Duration::from_millis(850)).await;
    assert_eq!(cache.get(&key).await.unwrap(), None, "expired on time");
    assert!(
        cache.set_unless_same(&key, "A", ttl).await.unwrap(),
        "expired: stored again"
    );
}

pub async fn set_unless_same_replaces_another_value(cache: &dyn SnapshotCache) {
    let key = unique_key("other");
    let ttl = Duration::from_secs(60);
    assert!(cache.set_unless_same(&key, "A", ttl).await.unwrap());
    assert!(
        cache.set_unless_same(&key, "B", ttl).await.unwrap(),
        "another value: stored"
    );
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("B"));
    assert!(
        cache.set_unless_same(&key, "A", ttl).await.unwrap(),
        "A again after B: stored"
    );
    assert!(!cache.set_unless_same(&key, "A", ttl).await.unwrap());
}

pub async fn delete_if_same_removes_only_that_value(cache: &dyn SnapshotCache) {
    let key = unique_key("delete-if");
    let ttl = Duration::from_secs(60);
    cache.set(&key, "B", ttl).await.unwrap();
    cache.delete_if_same(&key, "A").await.unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some("B"),
        "another value stays"
    );
    cache.delete_if_same(&key, "B").await.unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap(),
        None,
        "the same value is removed"
    );
    cache
        .delete_if_same(&key, "B")
        .await
        .expect("an absent key is fine");
}

pub async fn set_unless_same_is_atomic_under_concurrency(cache: &dyn SnapshotCache) {
    let key = unique_key("same-race");
    let calls = (0..50).map(|_| {
        let key = key.clone();
        async move {
            cache
                .set_unless_same(&key, "A", Duration::from_secs(10))
                .await
                .unwrap()
        }
    });
    let results = futures::future::join_all(calls).await;
    let winners = results.iter().filter(|won| **won).count();
    assert_eq!(
        winners, 1,
        "exactly one of 50 concurrent callers with the same value wins: {results:?}"
    );
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("A"));
}
