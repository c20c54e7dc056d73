//! The duties lease of gateway replicas, against SQLite and a real PostgreSQL server: one
//! holder at a time, a generation that grows with each new holder, and duty writes fenced on
//! it, so a holder that lost the lease writes nothing.

use atoll_api::jobs::JobState;
use atoll_gateway::db::Db;
use atoll_gateway::db::DbError;
use atoll_gateway::db::jobs::NewJob;
use atoll_gateway::db::lease::Duty;
use atoll_gateway::testing::TestDatabase;

async fn queued_job(db: &Db, pipeline: &str) -> String {
    let id = format!("{pipeline}-a");
    let job = NewJob { id: &id, idx: 0, name: "a", state: JobState::Queued, reason: "submitted", source: None };
    db.insert_pipeline(pipeline, "tester", "{}", &[job], 1_000).await.unwrap();
    id
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_deposed_holder_writes_nothing() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}");
        let db = Db::connect(&test.database).await.unwrap();
        let fresh = db.lease().await.unwrap();
        assert_eq!((fresh.generation, fresh.holder_now()), (0, None), "{engine}: nobody holds a fresh lease");

        let g1 = db.take_lease("a", "inc-a", 60_000, false).await.unwrap();
        assert_eq!(g1, Some(1), "{engine}: a lease nobody holds is taken");
        assert_eq!(db.take_lease("b", "inc-b", 60_000, false).await.unwrap(), None, "{engine}: held: not taken");
        assert_eq!(db.lease().await.unwrap().holder_now(), Some("a"));
        assert!(db.renew_lease("inc-a", 1, 60_000).await.unwrap(), "{engine}: the holder renews");
        assert!(!db.renew_lease("inc-b", 1, 60_000).await.unwrap(), "{engine}: another incarnation cannot");

        // The holder's duties write under generation 1.
        let job = queued_job(&db, "p1").await;
        let bound = db
            .assign_many(Duty::at(1), &[(job.as_str().into(), 1, "aws".into(), "placed".into())], 2_000)
            .await
            .unwrap();
        assert_eq!(bound, vec![true]);

        // The lease runs out (a TTL of 0 ms) and b takes it: generation 2.
        assert!(db.renew_lease("inc-a", 1, 0).await.unwrap());
        assert_eq!(db.take_lease("b", "inc-b", 60_000, false).await.unwrap(), Some(2), "{engine}: ran out: taken");
        assert!(!db.renew_lease("inc-a", 1, 60_000).await.unwrap(), "{engine}: the old holder cannot renew");

        // a, woken with a pass half done, writes under generation 1: refused, nothing written.
        let other = queued_job(&db, "p2").await;
        let late =
            db.assign_many(Duty::at(1), &[(other.as_str().into(), 1, "gcp".into(), "placed".into())], 3_000).await;
        assert!(matches!(late, Err(DbError::Deposed { generation: 1 })), "{engine}: {late:?}");
        assert!(matches!(db.reroute(Duty::at(1), "aws", 3_000).await, Err(DbError::Deposed { .. })));
        assert!(matches!(db.set_queued_reason(Duty::at(1), &other, 1, "x").await, Err(DbError::Deposed { .. })));
        assert!(matches!(db.forget_source(Duty::at(1), "sha256:00").await, Err(DbError::Deposed { .. })));
        let row = db.job(&other).await.unwrap().unwrap();
        assert_eq!(
            (row.state, row.cluster.as_deref()),
            (JobState::Queued, None),
            "{engine}: the late write left no trace"
        );
        assert_eq!(
            db.job(&job).await.unwrap().unwrap().cluster.as_deref(),
            Some("aws"),
            "{engine}: nor was aws' work moved"
        );
        // The new holder's writes go through, recorded with its generation.
        let bound = db
            .assign_many(Duty::at(2), &[(other.as_str().into(), 1, "gcp".into(), "placed".into())], 3_000)
            .await
            .unwrap();
        assert_eq!(bound, vec![true]);
        let attempts = db.attempts(&other).await.unwrap();
        assert_eq!(attempts.len(), 1);

        // An orderly stop gives the lease up: the next replica takes it without waiting.
        db.release_lease("inc-b", 2).await.unwrap();
        assert_eq!(db.lease().await.unwrap().holder_now(), None);
        assert_eq!(db.take_lease("c", "inc-c", 60_000, false).await.unwrap(), Some(3));
        // The only gateway (by its config) takes it at once, whoever held it.
        assert_eq!(db.take_lease("solo", "inc-solo", 60_000, true).await.unwrap(), Some(4));
        let history: Vec<(u64, String)> =
            db.lease_history().await.unwrap().into_iter().map(|(g, h, _)| (g, h)).collect();
        assert_eq!(
            history,
            vec![(1, "a".into()), (2, "b".into()), (3, "c".into()), (4, "solo".into())],
            "{engine}: one holder per generation"
        );
        db.close().await;
    }
}

#[tokio::test]
async fn replicas_are_listed_while_present_and_gone_when_they_leave() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}");
        let db = Db::connect(&test.database).await.unwrap();
        db.replica_seen("g1", "127.0.0.1:7000", "i1", 1, 0).await.unwrap();
        db.replica_seen("g2", "127.0.0.1:7001", "i2", 1, 3).await.unwrap();
        let listed: Vec<(String, String, u64)> =
            db.replicas(60_000).await.unwrap().into_iter().map(|r| (r.id, r.addr, r.generation)).collect();
        assert_eq!(
            listed,
            vec![("g1".into(), "127.0.0.1:7000".into(), 0), ("g2".into(), "127.0.0.1:7001".into(), 3)],
            "{engine}"
        );
        // A replica restarted under the same id replaces its row; the old incarnation's
        // goodbye does not remove the new one.
        db.replica_seen("g1", "127.0.0.1:7100", "i1b", 2, 0).await.unwrap();
        db.replica_gone("g1", "i1").await.unwrap();
        assert_eq!(db.replicas(60_000).await.unwrap()[0].addr, "127.0.0.1:7100", "{engine}");
        db.replica_gone("g1", "i1b").await.unwrap();
        assert_eq!(db.replicas(60_000).await.unwrap().len(), 1, "{engine}");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(
            db.replicas(10).await.unwrap().is_empty(),
            "{engine}: a replica not seen within the bound is not listed"
        );
        db.close().await;
    }
}

#[tokio::test]
async fn heartbeat_times_a_replica_could_not_write_are_kept_for_the_next_flush() {
    use atoll_api::gateway::Heartbeat;
    use atoll_api::ids::Term;
    use atoll_gateway::breakage::Breakage;
    use atoll_gateway::registry::Judging;
    use atoll_gateway::registry::Registry;
    let test = TestDatabase::sqlite();
    let db = Db::connect(&test.database).await.unwrap();
    let judging = Judging {
        since_ms: 0,
        suspect_after: std::time::Duration::from_secs(3),
        dead_after: std::time::Duration::from_secs(10),
    };
    let registry = Registry::load(db.clone(), judging, Breakage::default()).await.unwrap();
    let heartbeat = Heartbeat {
        term: Term(2),
        leader_id: 1,
        endpoint: "10.0.0.1:7101".into(),
        labels: vec!["default".into()],
        replicas: vec![],
        view_revision: None,
        capabilities: None,
    };
    let aws: atoll_api::ClusterName = "aws".parse().unwrap();
    registry.heartbeat(&aws, &heartbeat, 1_000).await.unwrap();
    registry.heartbeat(&aws, &heartbeat, 2_000).await.unwrap();
    assert_eq!(registry.pending_times(), 1, "the second heartbeat only moved the time: batched");
    db.close().await;
    assert!(registry.flush().await.is_err(), "the database is gone");
    assert_eq!(registry.pending_times(), 1, "the time that could not be written waits for the next flush");
    // A flush abandoned mid-way (its caller timed out) puts the batch back too.
    let abandoned = registry.flush();
    drop(abandoned);
    assert_eq!(registry.pending_times(), 1);
}
