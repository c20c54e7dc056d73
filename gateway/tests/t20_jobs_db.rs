//! The job tables, against SQLite and a real PostgreSQL server: every transition is fenced by
//! binding, state and term, so exactly one result gets in.

use atoll_api::gateway::Heartbeat;
use atoll_api::ids::Term;
use atoll_api::jobs::JobState;
use atoll_gateway::db::Db;
use atoll_gateway::db::jobs::BoundAttempt;
use atoll_gateway::db::jobs::Cancelled;
use atoll_gateway::db::jobs::NewJob;
use atoll_gateway::db::jobs::Transition;
use atoll_gateway::testing::TestDatabase;

/// A fresh database's lease generation: the duties of these tests are fenced on it.
const G0: atoll_gateway::db::lease::Duty = atoll_gateway::db::lease::Duty { generation: 0, fenced: true };

fn heartbeat(term: u64) -> Heartbeat {
    Heartbeat {
        term: Term(term),
        leader_id: 1,
        endpoint: "10.0.0.1:7101".into(),
        labels: vec!["default".into()],
        replicas: vec![],
        view_revision: None,
        capabilities: None,
    }
}

async fn pipeline(db: &Db, id: &str, jobs: &[(&str, JobState)]) {
    let ids: Vec<String> = jobs.iter().map(|(name, _)| format!("{id}-{name}")).collect();
    let new: Vec<NewJob<'_>> = jobs
        .iter()
        .enumerate()
        .map(|(idx, (name, state))| NewJob {
            id: &ids[idx],
            idx,
            name,
            state: *state,
            reason: "submitted",
            source: None,
        })
        .collect();
    db.insert_pipeline(id, "tester", "{}", &new, 1_000).await.unwrap();
}

fn end(state: JobState) -> Transition {
    Transition::End { state, exit_code: Some(0), message: None }
}

#[tokio::test]
async fn exactly_one_result_is_accepted_and_stale_terms_are_fenced() {
    for (engine, test) in TestDatabase::both().await {
        let db = Db::connect(&test.database).await.unwrap();
        db.register("aws", &heartbeat(2), 1_000).await.unwrap();
        db.register("gcp", &heartbeat(1), 1_000).await.unwrap();
        pipeline(&db, "p1", &[("a", JobState::Queued), ("b", JobState::Waiting)]).await;

        eprintln!("--- {engine}: a queued job binds once");
        assert!(db.assign(G0, "p1-a", 1, "aws", "placed", 2_000).await.unwrap());
        assert!(!db.assign(G0, "p1-a", 1, "gcp", "placed", 2_000).await.unwrap(), "no longer queued");
        assert!(!db.assign(G0, "p1-b", 1, "aws", "placed", 2_000).await.unwrap(), "waiting jobs are not placed");
        let bound = db.bound_attempts("aws").await.unwrap();
        assert_eq!(bound, vec![BoundAttempt { id: "p1-a".into(), attempt: 1, cancel_requested: false }]);
        assert_eq!(db.cluster_load().await.unwrap(), vec![("aws".to_string(), 1)]);

        eprintln!("--- {engine}: reports from another cluster, attempt or an old term change nothing");
        assert!(!db.apply_report("p1-a", "gcp", 1, JobState::Assigned, 9, &Transition::Start, 3_000).await.unwrap());
        assert!(!db.apply_report("p1-a", "aws", 2, JobState::Assigned, 2, &Transition::Start, 3_000).await.unwrap());
        assert!(
            !db.apply_report("p1-a", "aws", 1, JobState::Assigned, 1, &Transition::Start, 3_000).await.unwrap(),
            "term 1 < 2"
        );
        assert!(db.apply_report("p1-a", "aws", 1, JobState::Assigned, 2, &Transition::Start, 3_000).await.unwrap());
        assert!(
            !db.apply_report("p1-a", "aws", 1, JobState::Assigned, 2, &Transition::Start, 3_000).await.unwrap(),
            "decided on a stale read"
        );

        eprintln!("--- {engine}: two results race; one wins");
        let (finished, failed) = (end(JobState::Finished), end(JobState::Failure));
        let (first, second) = tokio::join!(
            db.apply_report("p1-a", "aws", 1, JobState::Running, 2, &finished, 4_000),
            db.apply_report("p1-a", "aws", 1, JobState::Running, 2, &failed, 4_000),
        );
        assert!(first.unwrap() ^ second.unwrap(), "exactly one of two racing results applies");
        let job = db.job("p1-a").await.unwrap().unwrap();
        assert!(job.state.is_final());
        assert_eq!(job.finished_ms, Some(4_000));
        let attempts = db.attempts("p1-a").await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            (attempts[0].cluster.as_str(), attempts[0].term, attempts[0].state.as_str()),
            ("aws", Some(Term(2)), job.state.as_str())
        );

        eprintln!("--- {engine}: settle moves only waiting jobs");
        db.settle_jobs(
            G0,
            &[("p1-b".into(), JobState::Queued, "parents done".into()), ("p1-a".into(), JobState::Skipped, "x".into())],
            5_000,
        )
        .await
        .unwrap();
        assert_eq!(db.job("p1-b").await.unwrap().unwrap().state, JobState::Queued);
        assert_eq!(db.job("p1-a").await.unwrap().unwrap().state, job.state, "a final job is never settled again");
    }
}

#[tokio::test]
async fn retries_reruns_reroutes_and_cancels() {
    for (engine, test) in TestDatabase::both().await {
        let db = Db::connect(&test.database).await.unwrap();
        db.register("aws", &heartbeat(1), 1_000).await.unwrap();
        pipeline(
            &db,
            "p",
            &[
                ("r", JobState::Queued),
                ("l", JobState::Queued),
                ("m", JobState::Queued),
                ("c", JobState::Queued),
                ("w", JobState::Waiting),
            ],
        )
        .await;
        for job in ["p-r", "p-l", "p-m", "p-c"] {
            assert!(db.assign(G0, job, 1, "aws", "placed", 2_000).await.unwrap());
        }

        eprintln!("--- {engine}: a retry queues attempt 2 for placement");
        let retry =
            Transition::Retry { failed_attempts: 1, state: JobState::Failure, exit_code: Some(3), message: None };
        assert!(db.apply_report("p-r", "aws", 1, JobState::Assigned, 1, &retry, 3_000).await.unwrap());
        let job = db.job("p-r").await.unwrap().unwrap();
        assert_eq!((job.state, job.cluster, job.attempt, job.failed_attempts), (JobState::Queued, None, 2, 1));
        assert!(!db.apply_report("p-r", "aws", 1, JobState::Queued, 1, &end(JobState::Finished), 3_000).await.unwrap());

        eprintln!("--- {engine}: a lost run becomes attempt 2 on the same cluster");
        assert!(
            db.apply_report("p-l", "aws", 1, JobState::Assigned, 1, &Transition::Rerun { message: None }, 3_000)
                .await
                .unwrap()
        );
        let job = db.job("p-l").await.unwrap().unwrap();
        assert_eq!((job.state, job.cluster.as_deref(), job.attempt), (JobState::Assigned, Some("aws"), 2));
        let states: Vec<String> = db.attempts("p-l").await.unwrap().into_iter().map(|a| a.state.to_string()).collect();
        assert_eq!(states, ["lost", "bound"]);

        eprintln!("--- {engine}: cancel kills what has not started and asks for the rest");
        assert_eq!(db.cancel("p-w", 4_000).await.unwrap(), Cancelled::Killed);
        assert_eq!(db.job("p-w").await.unwrap().unwrap().state, JobState::Killed);
        assert_eq!(db.cancel("p-c", 4_000).await.unwrap(), Cancelled::Requested);
        assert!(db.job("p-c").await.unwrap().unwrap().cancel_requested);
        let flagged: Vec<(String, bool)> = db
            .bound_attempts("aws")
            .await
            .unwrap()
            .into_iter()
            .map(|b| (b.id.to_string(), b.cancel_requested))
            .collect();
        assert!(flagged.contains(&("p-c".to_string(), true)) && flagged.contains(&("p-m".to_string(), false)));
        assert_eq!(db.cancel("p-w", 4_000).await.unwrap(), Cancelled::Nothing);

        eprintln!("--- {engine}: a dead cluster's work is queued again as new attempts, cancelled work killed");
        let touched = db.reroute(G0, "aws", 5_000).await.unwrap();
        assert_eq!(touched, vec!["p".to_string()]);
        let m = db.job("p-m").await.unwrap().unwrap();
        assert_eq!((m.state, m.cluster, m.attempt), (JobState::Queued, None, 2));
        assert_eq!(db.job("p-c").await.unwrap().unwrap().state, JobState::Killed);
        let l = db.job("p-l").await.unwrap().unwrap();
        assert_eq!((l.state, l.attempt), (JobState::Queued, 3));
        assert!(db.bound_attempts("aws").await.unwrap().is_empty());
        eprintln!("--- {engine}: the dead cluster's late result is refused");
        assert!(
            !db.apply_report("p-m", "aws", 1, JobState::Running, 1, &end(JobState::Finished), 6_000).await.unwrap()
        );
        assert_eq!(db.jobs_in_state(JobState::Queued).await.unwrap().len(), 3);
    }
}

#[tokio::test]
async fn jobs_are_read_by_id_in_batches_and_unknown_ids_are_left_out() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}");
        let db = Db::connect(&test.database).await.unwrap();
        let names: Vec<String> = (0..250).map(|i| format!("j{i}")).collect();
        let jobs: Vec<(&str, JobState)> = names.iter().map(|n| (n.as_str(), JobState::Queued)).collect();
        pipeline(&db, "p", &jobs).await;
        assert!(db.jobs_by_id(&[]).await.unwrap().is_empty());
        // 250 known ids and one unknown: three queries of at most a hundred.
        let mut ids: Vec<String> = names.iter().map(|n| format!("p-{n}")).collect();
        ids.push("p-nope".into());
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut read: Vec<String> = db.jobs_by_id(&refs).await.unwrap().into_iter().map(|r| r.id.to_string()).collect();
        read.sort();
        let mut want = ids[..250].to_vec();
        want.sort();
        assert_eq!(read, want);
        let one = db.jobs_by_id(&["p-j7"]).await.unwrap();
        assert_eq!((one.len(), one[0].name.as_str(), one[0].idx, one[0].state), (1, "j7", 7, JobState::Queued));
    }
}

#[tokio::test]
async fn routes_are_recorded_once_per_change_in_decision_order() {
    use atoll_api::jobs::Route;
    use atoll_api::jobs::RouteTaken;
    for (engine, test) in TestDatabase::both().await {
        let db = Db::connect(&test.database).await.unwrap();
        // A second gateway on the same database (PostgreSQL) or file (SQLite).
        let other = Db::connect(&test.database).await.unwrap();
        let taken = |from_job: &str, route, at_ms, reason: Option<&str>| RouteTaken {
            from_job: from_job.into(),
            from_cluster: "aws".parse().unwrap(),
            route,
            at_ms,
            reason: reason.map(str::to_string),
        };

        eprintln!("--- {engine}: the first route, then only changes");
        assert!(db.record_route(("p1-c", 1, "a"), &taken("a", Route::Pull, 1_000, None)).await.unwrap());
        assert!(!db.record_route(("p1-c", 1, "a"), &taken("a", Route::Pull, 1_100, None)).await.unwrap(), "same");
        assert!(
            !other.record_route(("p1-c", 1, "a"), &taken("a", Route::Pull, 1_150, None)).await.unwrap(),
            "another gateway sees the same last route"
        );
        let fell = taken("a", Route::Relay, 1_200, Some("pulling from aws: connection refused"));
        assert!(db.record_route(("p1-c", 1, "a"), &fell).await.unwrap(), "the fallback");
        assert!(db.record_route(("p1-c", 1, "b"), &taken("b", Route::Push, 1_050, None)).await.unwrap());
        assert!(db.record_route(("p1-c", 2, "a"), &taken("a", Route::Relay, 5_000, None)).await.unwrap());
        assert!(db.record_route(("p1-d", 1, "a"), &taken("a", Route::Pull, 900, None)).await.unwrap());

        eprintln!("--- {engine}: read back per job, by attempt then time");
        let routes = db.routes_of("p1-c").await.unwrap();
        let seen: Vec<(u32, &str, Route, i64)> =
            routes.iter().map(|(n, t)| (*n, t.from_job.as_str(), t.route, t.at_ms)).collect();
        assert_eq!(
            seen,
            vec![
                (1, "a", Route::Pull, 1_000),
                (1, "b", Route::Push, 1_050),
                (1, "a", Route::Relay, 1_200),
                (2, "a", Route::Relay, 5_000)
            ]
        );
        assert_eq!(routes[2].1, fell, "the reason is kept");
        assert!(db.routes_of("p9-x").await.unwrap().is_empty());

        eprintln!("--- {engine}: a whole pipeline's routes in one read (the dashboard's edges)");
        pipeline(&db, "p1", &[("c", JobState::Waiting), ("d", JobState::Waiting)]).await;
        pipeline(&db, "p2", &[("c", JobState::Waiting)]).await;
        let all = other.pipeline_routes("p1").await.unwrap();
        let seen: Vec<(&str, u32, &str, Route)> =
            all.iter().map(|(job, n, t)| (job.as_str(), *n, t.from_job.as_str(), t.route)).collect();
        assert_eq!(
            seen,
            vec![
                ("p1-c", 1, "a", Route::Pull),
                ("p1-c", 1, "b", Route::Push),
                ("p1-c", 1, "a", Route::Relay),
                ("p1-c", 2, "a", Route::Relay),
                ("p1-d", 1, "a", Route::Pull),
            ]
        );
        assert!(db.pipeline_routes("p2").await.unwrap().is_empty(), "no routes of another pipeline's jobs");

        eprintln!("--- {engine}: the fallbacks, for a restarted gateway");
        assert_eq!(db.fallen_edges().await.unwrap(), vec![("p1-c".to_string(), "a".to_string())]);
        assert!(other.edge_fell_back("p1-c", "a").await.unwrap(), "another gateway sees the fallback");
        assert!(!other.edge_fell_back("p1-c", "b").await.unwrap());
        assert!(!other.edge_fell_back("p1-d", "a").await.unwrap());
    }
}

#[tokio::test]
async fn recent_pipelines_come_newest_first_with_their_jobs_by_state() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}");
        let db = Db::connect(&test.database).await.unwrap();
        assert!(db.recent_pipelines(10).await.unwrap().is_empty());
        for (i, id) in ["p1", "p2", "p3"].into_iter().enumerate() {
            let ids = [format!("{id}-a"), format!("{id}-b"), format!("{id}-c")];
            let states = [JobState::Queued, JobState::Waiting, JobState::Waiting];
            let new: Vec<NewJob<'_>> = ids
                .iter()
                .enumerate()
                .map(|(idx, job)| NewJob {
                    id: job,
                    idx,
                    name: &job[3..],
                    state: states[idx],
                    reason: "submitted",
                    source: None,
                })
                .collect();
            db.insert_pipeline(id, "user ci", "{}", &new, 1_000 * (i as i64 + 1)).await.unwrap();
        }
        let listed = db.recent_pipelines(2).await.unwrap();
        assert_eq!(listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p3", "p2"], "the newest two");
        let mut jobs = listed[0].jobs.clone();
        jobs.sort_by_key(|(s, _)| s.as_str());
        assert_eq!(jobs, vec![(JobState::Queued, 1), (JobState::Waiting, 2)]);
        assert_eq!((listed[1].submitted_by.as_str(), listed[1].created_ms), ("user ci", 2_000));
        assert_eq!(db.recent_pipelines(10).await.unwrap().len(), 3);
        db.close().await;
    }
}

#[tokio::test]
async fn every_use_of_a_blob_is_found_by_its_digest() {
    use atoll_gateway::db::jobs::ReportApply;
    use atoll_gateway::db::retention::JobUse;
    let (out, src, other) = ("sha256:00aa", "sha256:00bb", "sha256:00cc");
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}");
        let db = Db::connect(&test.database).await.unwrap();
        db.register("aws", &heartbeat(1), 1_000).await.unwrap();
        let new = [
            NewJob { id: "u-make", idx: 0, name: "make", state: JobState::Queued, reason: "ready", source: Some(src) },
            NewJob { id: "u-use", idx: 1, name: "use", state: JobState::Waiting, reason: "waiting", source: None },
        ];
        db.insert_pipeline("u", "tester", "{}", &new, 1_000).await.unwrap();
        db.put_source(src, 10, 500, "tester").await.unwrap();
        assert!(db.assign(G0, "u-make", 1, "aws", "placed", 2_000).await.unwrap());
        let ended = ReportApply {
            id: "u-make".into(),
            cluster: "aws".into(),
            attempt: 1,
            from: JobState::Assigned,
            term: Term(1),
            transition: end(JobState::Finished),
            output: Some((out.into(), 42)),
        };
        assert_eq!(db.apply_reports(&[ended], 3_000).await.unwrap(), vec![true]);

        let uses = db.blob_uses(&[out, src, other]).await.unwrap();
        let made = |digest: &str, finished_ms| JobUse {
            digest: digest.into(),
            pipeline_id: "u".into(),
            idx: 0,
            state: JobState::Finished,
            finished_ms,
        };
        assert_eq!(uses.outputs, vec![made(out, Some(3_000))]);
        assert_eq!(uses.sources_of, vec![made(src, Some(3_000))]);
        assert_eq!(uses.attempts, vec![(out.to_string(), Some(3_000))]);
        assert_eq!(uses.pushed, vec![(src.to_string(), 500)]);

        eprintln!("--- {engine}: a second push moves the source's time on; a forgotten one is gone");
        assert_eq!(db.put_source(src, 10, 4_000, "tester").await.unwrap().created_ms, 4_000);
        assert_eq!(db.put_source(src, 10, 3_500, "tester").await.unwrap().created_ms, 4_000, "never back");
        db.forget_source(G0, src).await.unwrap();
        assert!(db.source(src).await.unwrap().is_none());
        assert!(db.blob_uses(&[other]).await.unwrap() == Default::default());
    }
}
