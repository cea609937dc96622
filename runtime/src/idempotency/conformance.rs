//! Every store keeps the same contract for leases, fencing, the relay's claim and expiry: the
//! same scenarios on memory, SQLite, PostgreSQL and Redis (the last two started by `make test`
//! on 127.0.0.1, their URLs in `ZEROFN_TEST_POSTGRES` and `ZEROFN_TEST_REDIS`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{sync::Arc, time::Duration};

use super::{Claim, Store, StoredOutput};
use crate::dead_letter::DeadLetter;

fn service(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suites through `make test`, which starts PostgreSQL and Redis on 127.0.0.1")
    })
}

async fn stores() -> Vec<(&'static str, Arc<dyn Store>)> {
    let dir = std::env::temp_dir().join(format!("zerofn-conformance-{}", uuid::Uuid::new_v4()));
    let sqlite = format!("sqlite:{}/zerofn.db", dir.display());
    // A fresh function name per run: records of earlier runs never interfere.
    let function = format!("conf-{}", uuid::Uuid::new_v4().simple());
    let mut all: Vec<(&'static str, Arc<dyn Store>)> = vec![(
        "memory",
        super::open("memory", &function, None).await.unwrap(),
    )];
    for (name, url) in [
        ("sqlite", sqlite),
        ("postgres", service("ZEROFN_TEST_POSTGRES")),
        ("redis", service("ZEROFN_TEST_REDIS")),
    ] {
        all.push((name, super::open(&url, &function, None).await.unwrap()));
    }
    all
}

/// An outbox entry, as a worker that completed would have stored it (shared by the tests of
/// the intake and the backlog).
pub(crate) fn output(id: &str) -> StoredOutput {
    StoredOutput {
        seq: 0,
        event_id: id.into(),
        event_type: "todo.notification.sent".into(),
        pubsub: "kafka-pubsub".into(),
        topic: "todo.notification.sent".into(),
        body: "{}".into(),
        traceparent: String::new(),
        partition_key: None,
        job: None,
    }
}

fn record(id: &str, key: &str) -> DeadLetter {
    DeadLetter::sample(id, "conf", key)
}

const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test]
async fn leases_are_renewed_fenced_and_waited_for_on_every_store() {
    let ttl = Duration::from_secs(60);
    for (name, s) in stores().await {
        let k = format!("lease-{}", uuid::Uuid::new_v4());
        assert_eq!(
            s.claim(&k, "a", MS(300), ttl).await.unwrap(),
            Claim::Acquired { attempt: 1 },
            "{name}"
        );
        match s.claim(&k, "b", MS(300), ttl).await.unwrap() {
            Claim::InFlight { lease_left } => {
                let left = lease_left.unwrap_or_else(|| panic!("{name}: lease left unknown"));
                assert!(left <= MS(300), "{name}: {left:?}");
            }
            other => panic!("{name}: {other:?}"),
        }
        // Renewed past its first end: still a's.
        for _ in 0..4 {
            tokio::time::sleep(MS(100)).await;
            assert!(s.renew(&k, "a", MS(300)).await.unwrap(), "{name}: renewed");
        }
        assert!(
            matches!(
                s.claim(&k, "b", MS(300), ttl).await.unwrap(),
                Claim::InFlight { .. }
            ),
            "{name}"
        );
        assert!(
            !s.renew(&k, "b", MS(300)).await.unwrap(),
            "{name}: only the holder renews"
        );
        // Lapsed: b takes over (a's attempt counted); a's renewal and writes are refused.
        tokio::time::sleep(MS(350)).await;
        assert_eq!(
            s.claim(&k, "b", MS(5000), ttl).await.unwrap(),
            Claim::Acquired { attempt: 2 },
            "{name}"
        );
        assert!(
            !s.renew(&k, "a", MS(300)).await.unwrap(),
            "{name}: a lost it"
        );
        assert!(
            !s.complete(&k, "a", &[], None, ttl).await.unwrap(),
            "{name}: a cannot complete"
        );
        assert!(
            !s.dead_letter(&k, "a", &record(&format!("dl-{k}"), &k))
                .await
                .unwrap(),
            "{name}: a cannot dead-letter"
        );
        assert!(
            s.dead_letter_by_id(&format!("dl-{k}"))
                .await
                .unwrap()
                .is_none(),
            "{name}: nothing written"
        );
        assert!(
            s.complete(&k, "b", &[output("o")], None, ttl)
                .await
                .unwrap(),
            "{name}"
        );
        // Done: a duplicate, never in flight, while b's publish right lives.
        assert_eq!(
            s.claim(&k, "c", MS(300), ttl).await.unwrap(),
            Claim::Done { unsent: vec![] },
            "{name}"
        );
        assert!(
            !s.dead_letter(&k, "b", &record(&format!("dl2-{k}"), &k))
                .await
                .unwrap(),
            "{name}: done stays done"
        );
    }
}

#[tokio::test]
async fn a_job_entry_of_the_outbox_comes_back_as_it_was_stored() {
    for (name, s) in stores().await {
        let ttl = Duration::from_secs(60);
        let k = format!("job-{}", uuid::Uuid::new_v4());
        let mut schedule = output("o-job");
        schedule.job = Some(super::JobOutput {
            name: "remind-t-1".into(),
            due: Some("2026-12-02T10:00:00.000Z".into()),
        });
        let mut cancel = output("o-cancel");
        cancel.seq = 1;
        cancel.job = Some(super::JobOutput {
            name: "remind-t-1".into(),
            due: None,
        });
        s.claim(&k, "w", MS(100), ttl).await.unwrap();
        assert!(
            s.complete(&k, "w", &[schedule.clone(), cancel.clone()], None, ttl)
                .await
                .unwrap(),
            "{name}"
        );
        tokio::time::sleep(MS(150)).await;
        assert_eq!(
            s.take_unsent(&k, "relay", MS(300)).await.unwrap(),
            vec![schedule, cancel],
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_relay_takes_only_lapsed_publish_rights_and_never_revives_a_record() {
    for (name, s) in stores().await {
        let ttl = Duration::from_secs(60);
        let k = format!("relay-{}", uuid::Uuid::new_v4());
        s.claim(&k, "w", MS(300), ttl).await.unwrap();
        assert!(
            s.complete(&k, "w", &[output("o1")], None, ttl)
                .await
                .unwrap(),
            "{name}"
        );
        assert_eq!(
            s.take_unsent(&k, "relay", MS(300)).await.unwrap(),
            vec![],
            "{name}: w still holds it"
        );
        assert!(
            s.has_unsent().await.unwrap(),
            "{name}: held, still a backlog"
        );
        tokio::time::sleep(MS(350)).await;
        assert_eq!(
            s.take_unsent(&k, "relay", MS(300)).await.unwrap(),
            vec![output("o1")],
            "{name}"
        );
        assert_eq!(
            s.take_unsent(&k, "other", MS(300)).await.unwrap(),
            vec![],
            "{name}: one holder"
        );
        s.mark_sent(&k, 0).await.unwrap();
        assert!(!s.has_unsent().await.unwrap(), "{name}: no backlog");
        tokio::time::sleep(MS(350)).await;
        assert_eq!(
            s.take_unsent(&k, "other", MS(300)).await.unwrap(),
            vec![],
            "{name}: all sent"
        );
        // Never a record out of nothing.
        let gone = format!("gone-{}", uuid::Uuid::new_v4());
        assert_eq!(
            s.take_unsent(&gone, "relay", MS(300)).await.unwrap(),
            vec![],
            "{name}"
        );
        assert_eq!(
            s.claim(&gone, "x", MS(300), ttl).await.unwrap(),
            Claim::Acquired { attempt: 1 },
            "{name}"
        );
    }
}

#[tokio::test]
async fn records_expire_a_ttl_after_completion() {
    for (name, s) in stores().await {
        let ttl = MS(1500);
        let k = format!("ttl-{}", uuid::Uuid::new_v4());
        s.claim(&k, "w", MS(5000), ttl).await.unwrap();
        tokio::time::sleep(MS(1000)).await;
        assert!(s.complete(&k, "w", &[], None, ttl).await.unwrap(), "{name}");
        tokio::time::sleep(MS(1000)).await;
        // 2 s after the claim, 1 s after completion: remembered.
        assert_eq!(
            s.claim(&k, "x", MS(300), ttl).await.unwrap(),
            Claim::Done { unsent: vec![] },
            "{name}"
        );
        tokio::time::sleep(MS(700)).await;
        // Past the TTL from completion: a new event for idempotency.
        assert_eq!(
            s.claim(&k, "y", MS(300), ttl).await.unwrap(),
            Claim::Acquired { attempt: 1 },
            "{name}"
        );
    }
}

#[tokio::test]
async fn completing_without_the_handlers_transaction_is_an_error_not_a_commit() {
    let ttl = Duration::from_secs(60);
    for (name, s) in stores().await {
        let k = format!("tx-{}", uuid::Uuid::new_v4());
        s.claim(&k, "w", MS(5000), ttl).await.unwrap();
        let Some(tx) = s.begin().await.unwrap() else {
            continue; // memory and Redis have no handler transaction
        };
        // A handler that kept its guard beyond its end (here: forever).
        std::mem::forget(tx.conn().await.unwrap());
        let completed = s.complete(&k, "w", &[], Some(tx), ttl).await;
        assert!(
            completed
                .as_ref()
                .is_err_and(|e| e.0.contains("still in use")),
            "{name}: {completed:?}"
        );
        assert!(
            matches!(
                s.claim(&k, "x", MS(300), ttl).await.unwrap(),
                Claim::InFlight { .. }
            ),
            "{name}: not recorded as done"
        );
    }
}
