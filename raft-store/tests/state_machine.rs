//! Apply semantics and snapshots on a real RocksDB directory.

use openraft::storage::{RaftLogStorage, RaftStateMachine, Snapshot, StorageHelper};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use raftmesh_proto::{ApplyResult, Cmd, KvCmd, KvResult, LogEntry, TypeConfig};
use raftmesh_raft_store::{open, StoreError};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;

fn entry(index: u64, cmd: Cmd) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(LogEntry { time_ms: 0, cmd }),
    }
}

fn put(key: &str, value: &str, if_revision: Option<u64>) -> Cmd {
    Cmd::Kv(KvCmd::Put {
        key: key.into(),
        value: value.into(),
        if_revision,
    })
}

fn cas(key: &str, expected: &str, desired: &str) -> Cmd {
    Cmd::Kv(KvCmd::Cas {
        key: key.into(),
        expected: expected.into(),
        desired: desired.into(),
    })
}

fn delete(key: &str) -> Cmd {
    Cmd::Kv(KvCmd::Delete { key: key.into() })
}

#[tokio::test]
async fn apply_rules_within_one_batch_and_across_restart() {
    let dir = TempDir::new().unwrap();
    {
        let (_log, mut sm, reader) = open(dir.path()).unwrap();
        let results = sm
            .apply(vec![
                entry(1, put("a", "1", Some(0))),
                // Same batch: must see the pending write of index 1.
                entry(2, put("a", "2", Some(0))),
                entry(3, put("a", "3", Some(1))),
                entry(4, cas("a", "3", "{\"n\":4}")),
                entry(5, cas("a", "3", "5")),
                entry(6, put("b", "true", None)),
                entry(7, delete("b")),
                entry(8, delete("never")),
            ])
            .await
            .unwrap();
        assert_eq!(
            results[0],
            ApplyResult::Kv(KvResult::Written { revision: 1 })
        );
        assert_eq!(
            results[1],
            ApplyResult::Kv(KvResult::RevisionMismatch { current: 1 })
        );
        assert_eq!(
            results[2],
            ApplyResult::Kv(KvResult::Written { revision: 3 })
        );
        assert!(matches!(
            results[3],
            ApplyResult::Kv(KvResult::Cas {
                ok: true,
                revision: 4,
                ..
            })
        ));
        match &results[4] {
            ApplyResult::Kv(KvResult::Cas {
                ok: false,
                revision: 4,
                value,
                diff,
            }) => {
                assert_eq!(value, "{\"n\":4}");
                assert!(diff.starts_with('['), "diff is a JSON patch: {diff}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(results[6], ApplyResult::Kv(KvResult::Deleted));
        assert_eq!(results[7], ApplyResult::Kv(KvResult::Deleted));
        let a = reader.kv_get("a").unwrap().unwrap();
        assert_eq!((a.revision, a.value.as_str()), (4, "{\"n\":4}"));
        assert!(reader.kv_get("b").unwrap().is_none());
    }
    // Reopen: data and last_applied survived.
    let (_log, mut sm, reader) = open(dir.path()).unwrap();
    let (last, _) = sm.applied_state().await.unwrap();
    assert_eq!(last.unwrap().index, 8);
    assert_eq!(reader.kv_get("a").unwrap().unwrap().revision, 4);
    assert_eq!(
        reader.kv_scan("", None, usize::MAX).unwrap().0,
        vec!["a".to_string()]
    );
}

#[tokio::test]
async fn snapshot_replaces_follower_state_atomically() {
    let (d1, d2) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (_l1, mut leader, _r1) = open(d1.path()).unwrap();
    let (_l2, mut follower, r2) = open(d2.path()).unwrap();
    let mut batch = Vec::new();
    for i in 1..=100u64 {
        batch.push(entry(i, put(&format!("k{i:03}"), &i.to_string(), None)));
    }
    leader.apply(batch).await.unwrap();
    // Follower has stale data that the snapshot must remove.
    follower
        .apply(vec![entry(1, put("stale", "0", None))])
        .await
        .unwrap();

    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 100);
    follower
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();

    assert!(r2.kv_get("stale").unwrap().is_none());
    assert_eq!(r2.kv_scan("k", None, usize::MAX).unwrap().0.len(), 100);
    assert_eq!(r2.kv_get("k042").unwrap().unwrap().value, "42");
    let (last, _) = follower.applied_state().await.unwrap();
    assert_eq!(last.unwrap().index, 100);
    let cur = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta.last_log_id.unwrap().index, 100);
}

#[tokio::test]
async fn a_batch_applies_in_order_at_one_revision() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm, reader) = open(dir.path()).unwrap();
    sm.apply(vec![entry(1, put("a", "0", None))]).await.unwrap();
    let results = sm
        .apply(vec![entry(
            2,
            Cmd::Pack(vec![
                put("a", "1", Some(1)),
                put("b", "2", Some(0)),
                put("c", "3", Some(7)),
                cas("d", "null", "4"),
            ]),
        )])
        .await
        .unwrap();
    let ApplyResult::Pack(results) = &results[0] else {
        panic!("batch result expected: {results:?}")
    };
    assert_eq!(
        results[0],
        ApplyResult::Kv(KvResult::Written { revision: 2 })
    );
    assert_eq!(
        results[1],
        ApplyResult::Kv(KvResult::Written { revision: 2 })
    );
    assert_eq!(
        results[2],
        ApplyResult::Kv(KvResult::RevisionMismatch { current: 0 })
    );
    assert!(matches!(
        results[3],
        ApplyResult::Kv(KvResult::Cas {
            ok: true,
            revision: 2,
            ..
        })
    ));
    assert_eq!(reader.kv_get("a").unwrap().unwrap().value, "1");
    assert!(reader.kv_get("c").unwrap().is_none());
    assert_eq!(
        reader.kv_scan("", None, usize::MAX).unwrap().0,
        vec!["a", "b", "d"]
    );
}

/// A snapshot's whole body, read from its file.
async fn body(s: Snapshot<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut f = s.snapshot;
    f.read_to_end(&mut out).await.unwrap();
    out
}

fn puts(range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
    range
        .map(|i| entry(i, put(&format!("k{i:03}"), &i.to_string(), None)))
        .collect()
}

#[tokio::test]
async fn a_newer_build_replaces_the_stored_snapshot_and_an_equal_one_does_not() {
    let dir = TempDir::new().unwrap();
    {
        let (_log, mut sm, _reader) = open(dir.path()).unwrap();
        sm.apply(puts(1..=3)).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        let old = builder.build_snapshot().await.unwrap();
        assert_eq!(old.meta.last_log_id.unwrap().index, 3);

        sm.apply(puts(4..=6)).await.unwrap();
        let new = builder.build_snapshot().await.unwrap();
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, new.meta);
        let new_meta = new.meta.clone();
        assert_eq!(body(cur).await, body(new).await);

        // Same last_log_id, same state: the stored copy stays.
        let again = builder.build_snapshot().await.unwrap();
        assert_eq!(again.meta.last_log_id, new_meta.last_log_id);
        assert_ne!(again.meta.snapshot_id, new_meta.snapshot_id);
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, new_meta);
    }
    let (_log, mut sm, _reader) = open(dir.path()).unwrap();
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta.last_log_id.unwrap().index, 6);
}

#[tokio::test]
async fn an_install_older_than_the_stored_snapshot_is_refused() {
    let (d1, d2) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (_l1, mut old_source, _r1) = open(d1.path()).unwrap();
    old_source.apply(puts(1..=3)).await.unwrap();
    let old = old_source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let (_l2, mut sm, reader) = open(d2.path()).unwrap();
    sm.apply(puts(1..=6)).await.unwrap();
    let stored = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let err = sm
        .install_snapshot(&old.meta, old.snapshot)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("older"), "{err}");
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, stored.meta);
    let (last, _) = sm.applied_state().await.unwrap();
    assert_eq!(last.unwrap().index, 6);
    assert_eq!(reader.kv_scan("k", None, usize::MAX).unwrap().0.len(), 6);
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// What a build that overwrote a newer install left behind: a snapshot at 5
/// while the log is purged up to 10.
#[tokio::test]
async fn open_drops_a_snapshot_older_than_the_purge_point_for_openraft_to_rebuild() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, mut sm, _reader) = open(dir.path()).unwrap();
        sm.apply(puts(1..=5)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.apply(puts(6..=10)).await.unwrap();
        log.purge(log_id(10)).await.unwrap();
    }
    let (mut log, mut sm, _reader) = open(dir.path()).unwrap();
    assert!(sm.get_current_snapshot().await.unwrap().is_none());

    let state = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .unwrap();
    assert_eq!(state.snapshot_meta.last_log_id, Some(log_id(10)));
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta.last_log_id, Some(log_id(10)));
}

#[tokio::test]
async fn open_refuses_a_state_machine_behind_the_purge_point() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, mut sm, _reader) = open(dir.path()).unwrap();
        sm.apply(puts(1..=3)).await.unwrap();
        log.purge(log_id(10)).await.unwrap();
    }
    match open(dir.path()) {
        Err(StoreError::Corrupt(msg)) => {
            assert!(msg.contains("index 10") && msg.contains("index 3"), "{msg}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("opened a state machine behind the purge point"),
    }
}

/// An all-or-nothing group keeps none of its writes when one of its
/// commands is refused by the state, and all of them otherwise; it reads
/// its own pending writes.
#[tokio::test]
async fn an_atomic_group_is_all_or_nothing() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm, reader) = open(dir.path()).unwrap();
    let results = sm
        .apply(vec![
            entry(
                1,
                Cmd::Atomic(vec![
                    put("a", "1", None),
                    // Sees the group's own pending write of "a".
                    cas("a", "1", "2"),
                    put("b", "1", Some(9)),
                ]),
            ),
            entry(
                2,
                Cmd::Atomic(vec![put("a", "1", Some(0)), put("b", "2", None)]),
            ),
        ])
        .await
        .unwrap();
    match &results[0] {
        ApplyResult::Atomic { kept, results } => {
            assert!(!kept);
            assert!(matches!(
                results[1],
                ApplyResult::Kv(KvResult::Cas { ok: true, .. })
            ));
            assert_eq!(
                results[2],
                ApplyResult::Kv(KvResult::RevisionMismatch { current: 0 })
            );
        }
        other => panic!("atomic result expected: {other:?}"),
    }
    assert!(matches!(results[1], ApplyResult::Atomic { kept: true, .. }));
    assert_eq!(reader.kv_get("a").unwrap().unwrap().revision, 2);
    assert_eq!(reader.kv_get("b").unwrap().unwrap().value, "2");
}
