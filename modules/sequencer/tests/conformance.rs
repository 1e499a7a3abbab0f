//! Conformance tests: one set of behaviour tests, run against every sequencer
//! driver, in the manner of Dapr's components-contrib conformance suite.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use mecha_abi::msg::ComponentSpec;
use mecha_mod_sequencer::drivers::{self, SeqError, Sequencer};
use mecha_module::testing::{self, temp_dir};
use mecha_module::DriverError;

mecha_module::suite_harness! {
    /// One driver under test (the SDK's harness), with the allocations the suite
    /// uses.
    struct Harness(dyn Sequencer);
}

impl Harness {
    /// Opens a driver of `kind` through the factory, so the factory is tested
    /// too. The runtime has two workers, so concurrent tests really run in
    /// parallel.
    fn new(kind: &str, metadata: &[(&str, &str)]) -> Self {
        Self(
            testing::Setup::new(spec(kind, metadata))
                .workers(2)
                .open(drivers::open),
        )
    }

    /// The redb driver with its default segment size.
    fn redb() -> Self {
        Self::new("sequencer.redb", &[])
    }

    /// The driver, shared, for tasks that allocate concurrently.
    fn seq(&self) -> Arc<dyn Sequencer> {
        self.shared()
    }

    /// Allocates `count` ids and returns them all.
    fn next_ids(&self, tenant: &str, key: &str, count: u32) -> Vec<u64> {
        let first = self
            .block(self.seq().next_ids(tenant, key, count))
            .expect("allocation succeeds");
        (first..first + u64::from(count)).collect()
    }

    fn next_id(&self, tenant: &str, key: &str) -> u64 {
        self.next_ids(tenant, key, 1)[0]
    }
}

fn assert_strictly_increasing(ids: &[u64]) {
    for pair in ids.windows(2) {
        assert!(pair[0] < pair[1], "ids go backwards or repeat: {ids:?}");
    }
}

// ---- The suite every driver runs. ----

fn first_id_is_one(h: Harness) {
    assert_eq!(h.next_id("t", "k"), 1);
}

fn ids_strictly_increase_per_key(h: Harness) {
    let ids: Vec<u64> = (0..50).map(|_| h.next_id("t", "k")).collect();
    assert_strictly_increasing(&ids);
}

fn batches_are_contiguous_and_above_earlier_ids(h: Harness) {
    let mut seen = vec![h.next_id("t", "k")];
    for count in [1, 2, 5, 7, 1, 10, 3] {
        let batch = h.next_ids("t", "k", count);
        assert_eq!(batch.len(), count as usize);
        assert!(
            batch[0] > *seen.last().expect("one id at least"),
            "batch {batch:?} does not start above {seen:?}"
        );
        seen.extend(batch);
    }
    assert_strictly_increasing(&seen);
}

fn keys_are_independent(h: Harness) {
    assert_eq!(h.next_ids("t", "a", 5), vec![1, 2, 3, 4, 5]);
    assert_eq!(h.next_id("t", "b"), 1);
    assert_eq!(h.next_id("t", "a"), 6);
    assert_eq!(h.next_id("t", "b"), 2);
}

fn tenants_are_independent(h: Harness) {
    assert_eq!(h.next_ids("uid:1", "k", 4), vec![1, 2, 3, 4]);
    assert_eq!(h.next_id("uid:2", "k"), 1);
    assert_eq!(h.next_id("uid:1", "k"), 5);
    // A tenant name that ends where the key begins must not collide with a
    // shorter tenant and a longer key.
    assert_eq!(h.next_id("uid:1", "kx"), 1);
    assert_eq!(h.next_id("uid:1k", "x"), 1);
}

fn a_maximal_batch_is_served(h: Harness) {
    let max = mecha_abi::msg::SEQ_MAX_COUNT;
    let first = h
        .block(h.seq().next_ids("t", "k", max))
        .expect("the largest batch is allowed");
    assert_eq!(first, 1);
    assert_eq!(h.next_id("t", "k"), u64::from(max) + 1);
}

fn concurrent_callers_get_no_duplicates(h: Harness) {
    const TASKS: u32 = 16;
    const CALLS: u32 = 100;
    let all = h.block(async {
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let seq = h.seq();
            tasks.spawn(async move {
                let mut mine = Vec::new();
                for call in 0..CALLS {
                    // Mixed batch sizes make requests straddle segment ends.
                    let count = 1 + (task + call) % 4;
                    let first = seq
                        .next_ids("t", "shared", count)
                        .await
                        .expect("allocation succeeds");
                    mine.extend(first..first + u64::from(count));
                }
                mine
            });
        }
        let mut all = Vec::new();
        while let Some(mine) = tasks.join_next().await {
            let mine = mine.expect("the task did not panic");
            // One caller's sequential allocations are ordered.
            assert_strictly_increasing(&mine);
            all.extend(mine);
        }
        all
    });
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "some id was handed out twice");
}

// ---- Per-tenant quotas; the suite runs these cases with `QUOTA`. ----

/// A quota of two sequences per tenant.
const QUOTA: &[(&str, &str)] = &[("maxSequencesPerTenant", "2")];

/// A tenant at its quota keeps using its sequences, is refused a new one
/// (RESOURCE_EXHAUSTED in the module, naming the field), and another tenant
/// is unaffected.
fn a_tenant_at_its_sequence_quota_keeps_its_sequences_but_gets_no_new_one(h: Harness) {
    assert_eq!(h.next_id("t", "a"), 1);
    assert_eq!(h.next_id("t", "b"), 1);
    match h.block(h.seq().next_ids("t", "c", 1)) {
        Err(SeqError::Driver(DriverError::Quota {
            field, limit, what, ..
        })) => {
            assert_eq!((field, limit), ("maxSequencesPerTenant", 2));
            assert!(what.contains("\"c\""), "{what}");
        }
        other => panic!("expected a quota refusal, got {other:?}"),
    }
    assert_eq!(h.next_id("t", "a"), 2, "existing sequences keep going");
    assert_eq!(
        h.next_id("other", "c"),
        1,
        "another tenant has its own quota"
    );
    assert!(
        h.block(h.seq().next_ids("t", "c", 1)).is_err(),
        "a refused key stays refused"
    );
}

mecha_module::conformance! {
    drivers(metadata): {
        memory => Harness::new("sequencer.memory", metadata),
        redb => Harness::new("sequencer.redb", metadata),
        // Segments so small that most cases cross several segment
        // boundaries, where reservation bugs would show.
        redb_small_segments => Harness::new(
            "sequencer.redb",
            &[&[("segmentSize", "3")], metadata].concat(),
        ),
    }
    cases: [
    first_id_is_one,
    ids_strictly_increase_per_key,
    batches_are_contiguous_and_above_earlier_ids,
    keys_are_independent,
    tenants_are_independent,
    a_maximal_batch_is_served,
    concurrent_callers_get_no_duplicates,
    a_tenant_at_its_sequence_quota_keeps_its_sequences_but_gets_no_new_one with QUOTA,
    ]
}

/// The count of a tenant's sequences is durable: after a reopen, a tenant
/// at its quota is still refused a new key.
#[test]
fn redb_sequence_counts_survive_a_reopen() {
    let mut h = Harness::new("sequencer.redb", QUOTA);
    h.next_id("t", "a");
    h.next_id("t", "b");
    h.reopen();
    assert!(matches!(
        h.block(h.seq().next_ids("t", "c", 1)),
        Err(SeqError::Driver(DriverError::Quota { .. }))
    ));
    assert!(h.next_id("t", "a") > 1);
}

// ---- Driver-specific behaviour. ----

/// Ids after a reopen exceed every id handed out before, including ids handed
/// from a partly used segment, for keys that were mid-segment, exactly at a
/// segment end, or fed a batch larger than a segment.
#[test]
fn redb_ids_never_go_backwards_across_reopen() {
    for size in ["1", "3", "10", "1000"] {
        let mut h = Harness::new("sequencer.redb", &[("segmentSize", size)]);
        let mut before: Vec<(&str, u64)> = Vec::new();
        for (key, counts) in [
            ("mid", &[1u32, 1][..]),
            ("exact", &[3][..]),
            ("big", &[2, 25][..]),
        ] {
            for &count in counts {
                let last = *h.next_ids("t", key, count).last().expect("ids");
                before.push((key, last));
            }
        }
        h.reopen();
        for (key, last) in before {
            let after = h.next_id("t", key);
            assert!(
                after > last,
                "segmentSize {size}: key {key:?} gave {after} after reopening, not above {last}"
            );
        }
    }
}

#[test]
fn redb_segment_size_is_honoured() {
    // Three ids of a 10-id segment, then a restart: the rest is skipped.
    let mut h = Harness::new("sequencer.redb", &[("segmentSize", "10")]);
    assert_eq!(h.next_ids("t", "k", 3), vec![1, 2, 3]);
    h.reopen();
    assert_eq!(h.next_id("t", "k"), 11);

    // The default segment is 1000 ids.
    let mut h = Harness::redb();
    assert_eq!(h.next_id("t", "k"), 1);
    h.reopen();
    assert_eq!(h.next_id("t", "k"), 1001);

    // Segments of one id persist every allocation and leave no gaps.
    let mut h = Harness::new("sequencer.redb", &[("segmentSize", "1")]);
    assert_eq!(h.next_ids("t", "k", 3), vec![1, 2, 3]);
    h.reopen();
    assert_eq!(h.next_ids("t", "k", 2), vec![4, 5]);
    h.reopen();
    assert_eq!(h.next_id("t", "k"), 6);
}

#[test]
fn redb_a_batch_larger_than_the_segment_reserves_enough() {
    let mut h = Harness::new("sequencer.redb", &[("segmentSize", "10")]);
    assert_eq!(h.next_ids("t", "k", 8), (1..=8).collect::<Vec<_>>());
    // Two ids are left in the segment; the batch uses them and reserves the
    // rest, staying contiguous.
    assert_eq!(h.next_ids("t", "k", 25), (9..=33).collect::<Vec<_>>());
    h.reopen();
    assert_eq!(h.next_id("t", "k"), 34);
}

#[test]
fn redb_concurrent_ids_stay_below_the_next_instance() {
    let mut h = Harness::new("sequencer.redb", &[("segmentSize", "7")]);
    let seq = h.seq();
    let highest = h.block(async {
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..8u32 {
            let seq = Arc::clone(&seq);
            tasks.spawn(async move {
                let mut highest = 0;
                for call in 0..50u32 {
                    let count = 1 + (task * call) % 5;
                    let first = seq.next_ids("t", "k", count).await.expect("allocation");
                    highest = highest.max(first + u64::from(count) - 1);
                }
                highest
            });
        }
        let mut highest = 0;
        while let Some(h) = tasks.join_next().await {
            highest = highest.max(h.expect("the task did not panic"));
        }
        highest
    });
    drop(seq);
    h.reopen();
    assert!(h.next_id("t", "k") > highest);
}

/// Component "ids" of type `kind` with `metadata`.
fn spec(kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
    testing::spec("ids", kind, metadata)
}

fn open_error(spec: &ComponentSpec, dir: &Path) -> SeqError {
    testing::refused(spec, drivers::open(spec, dir))
}

/// Asserts a configuration error of component "ids" whose reason mentions
/// `mentions`.
fn assert_config_error(spec: &ComponentSpec, dir: &Path, mentions: &str) {
    match open_error(spec, dir) {
        SeqError::Driver(DriverError::Config { component, reason }) => {
            assert_eq!(component, "ids");
            assert!(
                reason.contains(mentions),
                "reason {reason:?} mentions {mentions:?}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn redb_rejects_unknown_metadata_naming_the_field() {
    let dir = temp_dir();
    let bad = spec(
        "sequencer.redb",
        &[("segmentSize", "10"), ("CacheSize", "10")],
    );
    assert_config_error(&bad, dir.path(), "CacheSize");
}

#[test]
fn memory_rejects_metadata_other_than_its_quota_naming_the_field() {
    let dir = temp_dir();
    let bad = spec("sequencer.memory", &[("segmentSize", "10")]);
    assert_config_error(&bad, dir.path(), "segmentSize");
}

#[test]
fn redb_metadata_names_ignore_case() {
    for name in ["segmentsize", "SEGMENTSIZE", "SegmentSize"] {
        let dir = temp_dir();
        let s = spec("sequencer.redb", &[(name, "10"), ("PATH", "x.redb")]);
        let rt = testing::runtime();
        let seq = drivers::open(&s, dir.path())
            .unwrap_or_else(|e| panic!("metadata field {name:?} is `segmentSize`: {e}"));
        assert_eq!(rt.block_on(seq.next_ids("t", "k", 1)), Ok(1));
        drop(seq);
        assert!(dir.path().join("x.redb").is_file());
        let seq = drivers::open(&s, dir.path()).expect("reopen");
        assert_eq!(
            rt.block_on(seq.next_ids("t", "k", 1)),
            Ok(11),
            "the segment size of {name:?} was used"
        );
    }
}

#[test]
fn redb_rejects_bad_segment_sizes() {
    let dir = temp_dir();
    for value in [
        "0",
        "-1",
        "ten",
        "",
        "1.5",
        "1000000001",
        "99999999999999999999",
    ] {
        let s = spec("sequencer.redb", &[("segmentSize", value)]);
        assert_config_error(&s, dir.path(), "segmentSize");
    }
}

#[test]
fn redb_rejects_repeated_fields() {
    let dir = temp_dir();
    for metadata in [
        &[("segmentSize", "10"), ("segmentsize", "20")][..],
        &[("path", "a.redb"), ("Path", "b.redb")][..],
        &[("path", "")][..],
    ] {
        assert!(matches!(
            open_error(&spec("sequencer.redb", metadata), dir.path()),
            SeqError::Driver(DriverError::Config { .. })
        ));
    }
}

#[test]
fn redb_file_location_follows_the_spec() {
    let dir = temp_dir();
    // Without `path`, the file is named after the component.
    drop(drivers::open(&spec("sequencer.redb", &[]), dir.path()).expect("open"));
    assert!(dir.path().join("ids.redb").is_file());
    // A relative `path` lives under the data directory, parents created.
    let nested = spec("sequencer.redb", &[("path", "nested/dir/s.redb")]);
    drop(drivers::open(&nested, dir.path()).expect("open"));
    assert!(dir.path().join("nested/dir/s.redb").is_file());
    // A component name that is not a file name needs `path`.
    let mut escaping = spec("sequencer.redb", &[]);
    escaping.name = "../escape".to_owned();
    assert!(matches!(
        open_error(&escaping, dir.path()),
        SeqError::Driver(DriverError::Config { .. })
    ));
}

#[test]
fn factory_rejects_unknown_type() {
    let dir = temp_dir();
    match open_error(&spec("sequencer.nope", &[]), dir.path()) {
        SeqError::Driver(DriverError::Config { component, reason }) => {
            assert_eq!(component, "ids");
            assert!(reason.contains("sequencer.nope"), "reason {reason:?}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}
