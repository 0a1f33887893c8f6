//! The state store conformance suite: the same checks against the embedded memory store and
//! against Redis (a real `redis-server` on a free port), including expiry and concurrency, plus
//! what only Redis can show: several replicas (separate connection pools) enforcing one exact
//! limit, and a rate-limit decision costing one round trip.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use wasmgate_config::{RedisConfig, Secret};
use wasmgate_state::{MemoryStore, RedisStore, Store, StoreError};
use wasmgate_testkit::{RedisCluster, RedisSentinel, RedisServer};

fn redis_config(url: &str) -> RedisConfig {
    RedisConfig {
        url: Some(Secret::new(url.to_string())),
        ..Default::default()
    }
}

async fn redis_store(server: &RedisServer) -> Arc<dyn Store> {
    store_at(&server.url()).await
}

async fn store_at(url: &str) -> Arc<dyn Store> {
    Arc::new(
        RedisStore::connect(&redis_config(url))
            .await
            .expect("redis store"),
    )
}

/// Every check, against one store. `p` makes keys unique per backend.
async fn conformance(store: Arc<dyn Store>, p: &str) {
    strings_and_expiry(&*store, p).await;
    counters(&*store, p).await;
    sliding_window(&*store, p).await;
    fixed_window(&*store, p).await;
    sets(&*store, p).await;
    bounded_index(&*store, p).await;
    scan(&*store, p).await;
    wrong_types(&*store, p).await;
    concurrent_window_hits_are_exact(store.clone(), p).await;
    concurrent_incr_loses_nothing(store.clone(), p).await;
    assert!(store.health().is_up());
    store.ping().await.expect("ping");
}

async fn strings_and_expiry(s: &dyn Store, p: &str) {
    let k = format!("{p}str");
    assert_eq!(s.get(&k).await.unwrap(), None);
    s.set(&k, b"v1".to_vec(), None).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"v1"[..]));
    let binary = vec![0u8, 255, 10, 13];
    s.set(&k, binary.clone(), None).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap(), Some(binary), "values are bytes");
    let t = format!("{p}ttl");
    s.set(&t, b"x".to_vec(), Some(Duration::from_millis(150)))
        .await
        .unwrap();
    assert!(s.get(&t).await.unwrap().is_some());
    let many = s
        .get_many(&[k.clone(), format!("{p}missing"), t.clone()])
        .await
        .unwrap();
    assert_eq!(many.len(), 3);
    assert!(many[0].is_some() && many[1].is_none() && many[2].is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.get(&t).await.unwrap(), None, "expired");
    assert!(s.delete(&k).await.unwrap());
    assert!(!s.delete(&k).await.unwrap(), "already gone");
}

async fn counters(s: &dyn Store, p: &str) {
    let k = format!("{p}n");
    assert_eq!(s.incr(&k, 5, None).await.unwrap(), 5);
    assert_eq!(s.incr(&k, -2, None).await.unwrap(), 3);
    assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"3"[..]));
    // The expiry applies when the key is created, and only then.
    let t = format!("{p}nt");
    assert_eq!(
        s.incr(&t, 1, Some(Duration::from_millis(200)))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.incr(&t, 1, Some(Duration::from_secs(60))).await.unwrap(),
        2
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(s.get(&t).await.unwrap(), None, "the first expiry held");
    assert_eq!(s.incr(&t, 1, None).await.unwrap(), 1, "a fresh counter");
}

async fn sliding_window(s: &dyn Store, p: &str) {
    let k = format!("{p}sw");
    let w = Duration::from_millis(400);
    for i in 0..3u64 {
        let h = s.sliding_window_hit(&k, 3, w).await.unwrap();
        assert!(h.allowed, "hit {i}");
        assert_eq!(h.remaining, 2 - i);
        assert!(h.reset_after_ms <= 400, "{h:?}");
    }
    let h = s.sliding_window_hit(&k, 3, w).await.unwrap();
    assert!(!h.allowed && h.remaining == 0, "{h:?}");
    assert!(
        h.reset_after_ms > 0 && h.reset_after_ms <= 400,
        "wait until the oldest hit leaves: {h:?}"
    );
    // Rejected hits are not counted: once the window slides, all three slots are back.
    tokio::time::sleep(Duration::from_millis(450)).await;
    for _ in 0..3 {
        assert!(s.sliding_window_hit(&k, 3, w).await.unwrap().allowed);
    }
    assert!(!s.sliding_window_hit(&k, 3, w).await.unwrap().allowed);
    let zero = s
        .sliding_window_hit(&format!("{p}sw0"), 0, w)
        .await
        .unwrap();
    assert!(!zero.allowed, "a zero limit admits nothing");
}

async fn fixed_window(s: &dyn Store, p: &str) {
    let k = format!("{p}fw");
    let w = Duration::from_millis(400);
    let first = s.fixed_window_hit(&k, 2, w).await.unwrap();
    assert!(first.allowed && first.remaining == 1, "{first:?}");
    assert!(first.reset_after_ms > 0 && first.reset_after_ms <= 400);
    assert!(s.fixed_window_hit(&k, 2, w).await.unwrap().allowed);
    let over = s.fixed_window_hit(&k, 2, w).await.unwrap();
    assert!(!over.allowed && over.remaining == 0, "{over:?}");
    assert!(over.reset_after_ms <= first.reset_after_ms);
    assert_eq!(
        s.get(&k).await.unwrap().as_deref(),
        Some(&b"2"[..]),
        "a plain counter; rejected hits not counted"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let fresh = s.fixed_window_hit(&k, 2, w).await.unwrap();
    assert!(
        fresh.allowed && fresh.remaining == 1,
        "a new window: {fresh:?}"
    );
}

async fn sets(s: &dyn Store, p: &str) {
    let k = format!("{p}set");
    assert_eq!(s.set_card(&k).await.unwrap(), 0);
    assert!(s.set_add(&k, "a").await.unwrap());
    assert!(!s.set_add(&k, "a").await.unwrap(), "already there");
    assert!(s.set_add(&k, "b").await.unwrap());
    assert_eq!(s.set_card(&k).await.unwrap(), 2);
    assert!(s.set_contains(&k, "b").await.unwrap());
    assert!(!s.set_contains(&k, "c").await.unwrap());
    let mut m = s.set_members(&k).await.unwrap();
    m.sort();
    assert_eq!(m, ["a", "b"]);
    assert!(s.set_remove(&k, "a").await.unwrap());
    assert!(!s.set_remove(&k, "a").await.unwrap());
    assert!(s.set_remove(&k, "b").await.unwrap());
    assert_eq!(s.set_card(&k).await.unwrap(), 0);
    assert!(s
        .set_members(&format!("{p}noset"))
        .await
        .unwrap()
        .is_empty());
}

async fn bounded_index(s: &dyn Store, p: &str) {
    let index = format!("{p}cache:keys");
    let prefix = format!("{p}cache:");
    let ttl = Duration::from_secs(60);
    let mut evicted = 0;
    for i in 0..25 {
        evicted += s
            .put_indexed(&index, &prefix, &format!("h{i}"), vec![i as u8], ttl, 10)
            .await
            .unwrap();
    }
    assert_eq!(s.set_card(&index).await.unwrap(), 10, "bounded");
    assert_eq!(evicted, 15);
    let members = s.set_members(&index).await.unwrap();
    assert!(
        members.contains(&"h24".to_string()),
        "the newest entry is kept"
    );
    let mut live = 0;
    for i in 0..25 {
        let v = s.get(&format!("{prefix}h{i}")).await.unwrap();
        let indexed = members.contains(&format!("h{i}"));
        assert_eq!(v.is_some(), indexed, "h{i}: entry and index agree");
        live += usize::from(v.is_some());
    }
    assert_eq!(
        live, 10,
        "evicted entries are deleted with their index member"
    );
    // Re-putting an indexed key replaces it without evicting anything.
    let n = s
        .put_indexed(&index, &prefix, "h24", b"new".to_vec(), ttl, 10)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        s.get(&format!("{prefix}h24")).await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    // Entries expire on their own.
    s.put_indexed(
        &index,
        &prefix,
        "short",
        b"x".to_vec(),
        Duration::from_millis(100),
        100,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(s.get(&format!("{prefix}short")).await.unwrap(), None);
}

async fn scan(s: &dyn Store, p: &str) {
    for k in ["w*x:1:heartbeat", "w*x:2:heartbeat", "wyx:3:heartbeat"] {
        s.set(&format!("{p}{k}"), b"1".to_vec(), None)
            .await
            .unwrap();
    }
    let mut found = s.scan_prefix(&format!("{p}w*x:"), 100).await.unwrap();
    found.sort();
    assert_eq!(
        found,
        [format!("{p}w*x:1:heartbeat"), format!("{p}w*x:2:heartbeat")],
        "glob characters in the prefix are literal"
    );
    assert_eq!(s.scan_prefix(&format!("{p}w"), 1).await.unwrap().len(), 1);
}

async fn wrong_types(s: &dyn Store, p: &str) {
    let k = format!("{p}typed");
    s.set_add(&k, "m").await.unwrap();
    assert!(matches!(s.get(&k).await, Err(StoreError::Refused(_))));
    assert!(matches!(
        s.incr(&k, 1, None).await,
        Err(StoreError::Refused(_))
    ));
    let t = format!("{p}text");
    s.set(&t, b"abc".to_vec(), None).await.unwrap();
    assert!(matches!(
        s.incr(&t, 1, None).await,
        Err(StoreError::Refused(_))
    ));
    assert!(matches!(
        s.sliding_window_hit(&t, 1, Duration::from_secs(1)).await,
        Err(StoreError::Refused(_))
    ));
}

/// `n` concurrent sliding-window hits on `key` (limit `limit`), spread over `stores`: how many
/// were allowed.
async fn concurrent_hits(stores: &[Arc<dyn Store>], key: &str, limit: u64, n: usize) -> usize {
    let hits = (0..n).map(|i| {
        let (s, k) = (stores[i % stores.len()].clone(), key.to_string());
        tokio::spawn(async move {
            s.sliding_window_hit(&k, limit, Duration::from_secs(60))
                .await
                .unwrap()
                .allowed
        })
    });
    futures_util::future::join_all(hits)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count()
}

async fn concurrent_window_hits_are_exact(store: Arc<dyn Store>, p: &str) {
    let allowed = concurrent_hits(&[store], &format!("{p}race"), 50, 200).await;
    assert_eq!(allowed, 50, "exactly the limit under 200 concurrent hits");
}

async fn concurrent_incr_loses_nothing(store: Arc<dyn Store>, p: &str) {
    let k = format!("{p}count");
    let tasks = (0..100).map(|_| {
        let (s, k) = (store.clone(), k.clone());
        tokio::spawn(async move { s.incr(&k, 1, None).await.unwrap() })
    });
    let mut seen: Vec<i64> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (1..=100).collect::<Vec<_>>(),
        "every increment distinct"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    conformance(Arc::new(MemoryStore::new(100_000)), "gateway:conf:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_conforms() {
    let server = RedisServer::start().await;
    conformance(redis_store(&server).await, "gateway:conf:").await;
}

/// `redis-cluster://`: keys spread over three primaries; multi-key reads become pipelined
/// single-key reads, scans visit every node, and the cache index is kept with single-key steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_store_conforms() {
    let cluster = RedisCluster::start(3).await;
    conformance(store_at(&cluster.url()).await, "gateway:conf:").await;
}

/// `redis-sentinel://`: the primary is found through the sentinel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_sentinel_store_conforms() {
    let sentinel = RedisSentinel::start().await;
    let store = store_at(&sentinel.url()).await;
    conformance(store.clone(), "gateway:conf:").await;
    // The data is on the primary the sentinel named.
    let direct = redis_store(sentinel.primary()).await;
    store
        .set("gateway:via-sentinel", b"1".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        direct.get("gateway:via-sentinel").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

#[tokio::test]
async fn memory_store_is_bounded() {
    let s = MemoryStore::new(64);
    for i in 0..1_000 {
        s.set(&format!("k{i}"), b"v".to_vec(), None).await.unwrap();
    }
    let n = s.keys().len();
    assert!((32..=64).contains(&n), "bounded to max_keys: {n}");
    assert_eq!(
        s.get("k999").await.unwrap().as_deref(),
        Some(&b"v"[..]),
        "the newest key is kept"
    );
}

/// Three replicas (three connection pools, as three gateway processes have) hitting one
/// window at once: exactly the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_exact_limit_on_redis() {
    let server = RedisServer::start().await;
    let replicas = [
        redis_store(&server).await,
        redis_store(&server).await,
        redis_store(&server).await,
    ];
    let allowed = concurrent_hits(&replicas, "gateway:ratelimit:client-1", 20, 90).await;
    assert_eq!(allowed, 20);
}

/// A rate-limit decision is one round trip: `MONITOR` sees exactly one command from the
/// gateway's connection per decision (an `EVALSHA`; what the script runs shows as `lua`).
#[tokio::test]
async fn a_window_decision_is_one_round_trip() {
    let server = RedisServer::start().await;
    let store = redis_store(&server).await;
    // Scripts are loaded at connect; after a restart the first call reloads them.
    store
        .sliding_window_hit("gateway:ratelimit:warm", 5, Duration::from_secs(60))
        .await
        .unwrap();
    let monitor = server.monitor().await;
    for _ in 0..10 {
        store
            .sliding_window_hit("gateway:ratelimit:rt", 5, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let from_gateway: Vec<String> = monitor
        .commands()
        .await
        .into_iter()
        .filter(|c| c.client != "lua" && !c.command.eq_ignore_ascii_case("ping"))
        .map(|c| c.command.to_uppercase())
        .collect();
    assert_eq!(from_gateway, vec!["EVALSHA"; 10], "{from_gateway:?}");
}

/// Decisions made at the same moment go to Redis as one script call (`redis.batch_window_decisions`,
/// the default), each decided as alone: of 50 at once on a limit of 20, exactly 20 pass, with
/// 19..0 remaining; a fixed window in the same batch keeps its own limit; a decision on a key of
/// another type fails alone (WRONGTYPE), not the batch. Without batching, every decision is its
/// own `EVALSHA`.
#[tokio::test]
async fn decisions_made_together_go_as_one_script_call() {
    let server = RedisServer::start().await;
    for batch in [true, false] {
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::connect(&RedisConfig {
                batch_window_decisions: batch,
                ..redis_config(&server.url())
            })
            .await
            .unwrap(),
        );
        let key = |k: &str| format!("gateway:b:{k}:{batch}");
        store
            .set(&key("wrong"), b"a string".to_vec(), None)
            .await
            .unwrap();
        let monitor = server.monitor().await;
        let window = Duration::from_secs(60);
        let hits = (0..51).map(|i| {
            let store = store.clone();
            async move {
                match i {
                    0 => (
                        'w',
                        store.sliding_window_hit(&key("wrong"), 20, window).await,
                    ),
                    i if i % 5 == 4 => ('f', store.fixed_window_hit(&key("f"), 3, window).await),
                    _ => ('s', store.sliding_window_hit(&key("s"), 20, window).await),
                }
            }
        });
        let results = futures_util::future::join_all(hits).await;
        let sent = monitor
            .commands()
            .await
            .into_iter()
            .filter(|c| c.client != "lua" && c.command.eq_ignore_ascii_case("evalsha"))
            .count();
        let decided = |kind: char| {
            results
                .iter()
                .filter(move |(k, _)| *k == kind)
                .map(|(_, r)| r.as_ref().expect("decided"))
        };
        let mut remaining: Vec<u64> = decided('s')
            .filter(|h| h.allowed)
            .map(|h| h.remaining)
            .collect();
        remaining.sort_unstable();
        assert_eq!(remaining, (0..20).collect::<Vec<_>>(), "batch {batch}");
        assert_eq!(
            decided('f').filter(|h| h.allowed).count(),
            3,
            "batch {batch}"
        );
        assert!(
            decided('s')
                .chain(decided('f'))
                .filter(|h| !h.allowed)
                .all(|h| h.remaining == 0),
            "batch {batch}"
        );
        match &results[0].1 {
            Err(StoreError::Refused(e)) => assert!(e.contains("WRONGTYPE"), "{e}"),
            other => panic!("a sorted-set decision on a string: {other:?}"),
        }
        if batch {
            assert!(sent <= 5, "51 decisions at once took {sent} EVALSHA");
        } else {
            assert_eq!(sent, 51);
        }
    }
}

/// The request that queued a batch first goes away (its client hung up) before the batch is
/// sent: the others still get their decisions.
#[tokio::test]
async fn a_batch_outlives_the_request_that_started_it() {
    use futures_util::FutureExt;
    let server = RedisServer::start().await;
    let store = redis_store(&server).await;
    let window = Duration::from_secs(60);
    let mut first = Box::pin(store.sliding_window_hit("gateway:b:drop", 10, window));
    assert!(
        (&mut first).now_or_never().is_none(),
        "the first decision waits for its batch"
    );
    let mut others = Box::pin(futures_util::future::join_all(
        (0..5).map(|_| store.sliding_window_hit("gateway:b:drop", 10, window)),
    ));
    assert!(
        (&mut others).now_or_never().is_none(),
        "the others join its batch"
    );
    drop(first);
    let others = tokio::time::timeout(Duration::from_secs(5), others)
        .await
        .expect("the batch was sent without the request that started it");
    assert!(others.iter().all(|h| h.as_ref().unwrap().allowed));
}

/// Redis down: calls fail with `unavailable` (fast, not after queueing), health says why;
/// Redis back: the same store recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_reported_and_recovered_from() {
    let mut server = RedisServer::start().await;
    let store = redis_store(&server).await;
    store.set("gateway:o:k", b"1".to_vec(), None).await.unwrap();
    server.stop();
    let mut saw_unavailable = false;
    for _ in 0..50 {
        match store.get("gateway:o:k").await {
            Err(StoreError::Unavailable(_)) => {
                saw_unavailable = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(saw_unavailable, "a stopped Redis makes calls unavailable");
    let h = store.health();
    assert_eq!(h.status, "down");
    assert!(h.error.is_some() && h.down_since.is_some(), "{h:?}");
    server.restart().await;
    let mut recovered = false;
    for _ in 0..100 {
        if store.set("gateway:o:k", b"2".to_vec(), None).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "reconnected without a restart");
    // Health follows the background PING (a command's success may be a stale reply): up
    // within about a second.
    eventually("health says up again", async || store.health().is_up()).await;
    let w = store
        .sliding_window_hit("gateway:o:w", 1, Duration::from_secs(5))
        .await
        .expect("scripts reload on the new server");
    assert!(w.allowed);
}
