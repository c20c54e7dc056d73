//! The gateway's SQL, run against SQLite and against a real PostgreSQL server.

use atoll_api::gateway::Heartbeat;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::ReplicaInfo;
use atoll_api::gateway::RowCell;
use atoll_api::gateway::Scope;
use atoll_api::ids::Term;
use atoll_gateway::db::Db;
use atoll_gateway::db::clusters::Registered;
use atoll_gateway::db::matrix::StoredRow;
use atoll_gateway::db::tokens::JoinRefused;
use atoll_gateway::testing::TestDatabase;

fn heartbeat(term: u64, leader: u64) -> Heartbeat {
    Heartbeat {
        term: Term(term),
        leader_id: leader,
        endpoint: format!("10.0.0.{leader}:7101"),
        labels: vec!["aws".into(), "default".into()],
        replicas: vec![ReplicaInfo { id: leader, addr: format!("10.0.0.{leader}:7101"), voter: true }],
        view_revision: None,
        capabilities: None,
    }
}

#[tokio::test]
async fn registry_fencing_and_revocation() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}: registration is fenced by term");
        let db = Db::connect(&test.database).await.unwrap();
        assert_eq!(db.engine(), engine);
        assert_eq!(db.register("aws", &heartbeat(3, 1), 1_000).await.unwrap(), Registered::Accepted);
        assert_eq!(db.register("aws", &heartbeat(3, 1), 2_000).await.unwrap(), Registered::Accepted, "same term again");
        assert_eq!(db.register("aws", &heartbeat(2, 2), 3_000).await.unwrap(), Registered::Fenced { term: Term(3) });
        assert_eq!(db.register("aws", &heartbeat(4, 2), 4_000).await.unwrap(), Registered::Accepted);
        let row = db.cluster("aws").await.unwrap().unwrap();
        assert_eq!((row.term, row.leader_id, row.last_seen_ms), (Term(4), Some(2), Some(4_000)));
        assert_eq!(row.labels, vec!["aws", "default"]);
        assert_eq!(row.endpoint.as_deref(), Some("10.0.0.2:7101"));

        eprintln!("--- {engine}: heartbeats touch only the current term, never backwards");
        db.touch(&[("aws".into(), Term(4), 5_000), ("aws".into(), Term(3), 9_000)]).await.unwrap();
        assert_eq!(db.cluster("aws").await.unwrap().unwrap().last_seen_ms, Some(5_000));
        db.touch(&[("aws".into(), Term(4), 4_500)]).await.unwrap();
        assert_eq!(db.cluster("aws").await.unwrap().unwrap().last_seen_ms, Some(5_000));

        eprintln!("--- {engine}: enable, disable, revoke");
        assert!(db.set_enabled("aws", false).await.unwrap());
        assert!(!db.cluster("aws").await.unwrap().unwrap().enabled);
        assert!(!db.set_enabled("nowhere", true).await.unwrap());
        assert!(db.revoke("aws", 6_000).await.unwrap());
        assert_eq!(db.register("aws", &heartbeat(9, 1), 7_000).await.unwrap(), Registered::Revoked);
        assert_eq!(db.cluster("aws").await.unwrap().unwrap().revoked_ms, Some(6_000));

        eprintln!("--- {engine}: a token names a cluster before it registers");
        db.ensure_cluster("gcp", &["gcp".to_string()]).await.unwrap();
        db.ensure_cluster("gcp", &["other".to_string()]).await.unwrap();
        let gcp = db.cluster("gcp").await.unwrap().unwrap();
        assert_eq!((gcp.labels, gcp.term, gcp.last_seen_ms), (vec!["gcp".to_string()], Term(0), None));
        assert_eq!(
            db.clusters().await.unwrap().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            vec!["aws", "gcp"]
        );
        db.close().await;
    }
}

#[tokio::test]
async fn join_tokens_enroll_as_many_replicas_as_made_for_and_expire() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}");
        let db = Db::connect(&test.database).await.unwrap();
        db.insert_join_token("h1", "aws", &["aws".to_string()], 0, 10_000, 1).await.unwrap();
        db.insert_join_token("h2", "aws", &[], 0, 1_000, 1).await.unwrap();
        db.insert_join_token("h3", "aws", &[], 0, 10_000, 3).await.unwrap();
        let wrong = db.consume_join_token("h1", "gcp", 400, "spiffe://atoll/cluster/gcp/node/1").await.unwrap();
        assert_eq!(
            wrong,
            Err(JoinRefused::OtherCluster("aws".into())),
            "a CSR for another cluster leaves the token unused"
        );
        let grant =
            db.consume_join_token("h1", "aws", 500, "spiffe://atoll/cluster/aws/node/1").await.unwrap().unwrap();
        assert_eq!((grant.cluster.as_str(), grant.labels), ("aws", vec!["aws".to_string()]));
        let again = db.consume_join_token("h1", "aws", 600, "spiffe://atoll/cluster/aws/node/2").await.unwrap();
        assert_eq!(again, Err(JoinRefused::Used { by: "spiffe://atoll/cluster/aws/node/1".into(), max_uses: 1 }));
        for node in 1..=3 {
            let uri = format!("spiffe://atoll/cluster/aws/node/{node}");
            assert!(
                db.consume_join_token("h3", "aws", 700, &uri).await.unwrap().is_ok(),
                "a token for 3 enrolls {node}"
            );
        }
        let fourth = db.consume_join_token("h3", "aws", 800, "spiffe://atoll/cluster/aws/node/4").await.unwrap();
        let used_by = (1..=3).map(|n| format!("spiffe://atoll/cluster/aws/node/{n}")).collect::<Vec<_>>().join(", ");
        assert_eq!(fourth, Err(JoinRefused::Used { by: used_by, max_uses: 3 }), "the fourth replica is refused");
        assert_eq!(db.consume_join_token("h2", "aws", 2_000, "x").await.unwrap(), Err(JoinRefused::Expired));
        assert_eq!(db.consume_join_token("nope", "aws", 0, "x").await.unwrap(), Err(JoinRefused::Unknown));
        db.close().await;
    }
}

#[tokio::test]
async fn user_tokens_and_matrix_rows() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}: user tokens");
        let db = Db::connect(&test.database).await.unwrap();
        assert!(!db.has_admin_token(0).await.unwrap());
        db.insert_user_token("u1", "alice", &[Scope::Read], 0, None).await.unwrap();
        db.insert_user_token("u2", "root", &[Scope::Admin], 0, Some(1_000)).await.unwrap();
        assert!(db.has_admin_token(500).await.unwrap());
        assert!(!db.has_admin_token(2_000).await.unwrap(), "expired admin tokens do not count");
        assert_eq!(db.user_token("u1", 5_000).await.unwrap().unwrap().scopes, vec![Scope::Read]);
        assert!(db.user_token("u2", 5_000).await.unwrap().is_none(), "expired");

        eprintln!("--- {engine}: one row per reporter, fenced by term");
        let cell = |to: &str, state| RowCell { to: to.into(), state, rtt_ms: Some(1.5), loss: 0.0 };
        let row = |term, state, at| StoredRow {
            reporter: "aws".into(),
            term: Term(term),
            cells: vec![cell("gcp", state)],
            reported_ms: at,
        };
        db.put_rows(&[row(2, LinkState::Reachable, 10).into()]).await.unwrap();
        db.put_rows(&[row(1, LinkState::Unreachable, 20).into()]).await.unwrap();
        assert_eq!(db.rows().await.unwrap(), vec![row(2, LinkState::Reachable, 10)]);
        db.put_rows(&[row(2, LinkState::Suspect, 30).into()]).await.unwrap();
        assert_eq!(db.rows().await.unwrap(), vec![row(2, LinkState::Suspect, 30)]);
        assert_eq!(db.row_versions().await.unwrap(), vec![("aws".to_string(), 2, 30)]);
        assert_eq!(db.row("aws").await.unwrap(), Some(row(2, LinkState::Suspect, 30)));
        assert_eq!(db.row("gcp").await.unwrap(), None);
        db.close().await;
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_a_newer_schema_is_refused() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}");
        let db = Db::connect(&test.database).await.unwrap();
        db.close().await;
        let db = Db::connect(&test.database).await.expect("connecting again applies nothing new");
        db.ping().await.unwrap();
        // Pretend a newer build migrated this database.
        atoll_gateway::testing::record_foreign_migration(&db, 99).await;
        db.close().await;
        let err = Db::connect(&test.database).await.unwrap_err().to_string();
        assert!(
            err.contains("migrated by a newer atoll (schema version 99; this build knows up to 12)"),
            "{engine}: {err}"
        );
    }
}

#[tokio::test]
async fn a_dashboard_session_lasts_while_it_and_its_token_do() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}");
        let db = Db::connect(&test.database).await.unwrap();
        db.insert_user_token("t1", "ci", &[Scope::Read], 0, Some(10_000)).await.unwrap();
        db.insert_session("s1", "t1", "csrf1", 0, 5_000).await.unwrap();
        db.insert_session("s2", "t1", "csrf2", 0, 50_000).await.unwrap();
        db.insert_session("s3", "unknown-token", "csrf3", 0, 50_000).await.unwrap();
        let (session, user) = db.session_user("s1", 1_000).await.unwrap().expect("a live session");
        assert_eq!((session.csrf.as_str(), user.name.as_str(), user.scopes), ("csrf1", "ci", vec![Scope::Read]));
        assert!(db.session_user("s1", 6_000).await.unwrap().is_none(), "the session timed out");
        assert!(db.session_user("s2", 6_000).await.unwrap().is_some());
        assert!(db.session_user("s2", 11_000).await.unwrap().is_none(), "its token expired");
        assert!(db.session_user("s3", 1_000).await.unwrap().is_none(), "its token is gone");
        db.delete_session("s2").await.unwrap();
        assert!(db.session_user("s2", 6_000).await.unwrap().is_none(), "signed out");
        db.close().await;
    }
}

#[tokio::test]
async fn secrets_are_stored_sealed_replaced_listed_and_deleted() {
    for (engine, test) in TestDatabase::both().await {
        eprintln!("--- {engine}");
        let db = Db::connect(&test.database).await.unwrap();
        assert!(db.secrets().await.unwrap().is_empty());
        db.put_secret("TOKEN", "00aa", 1_000, "operator a").await.unwrap();
        db.put_secret("B", "00bb", 2_000, "user b").await.unwrap();
        db.put_secret("TOKEN", "00cc", 3_000, "user c").await.unwrap();
        assert_eq!(db.sealed_secret("TOKEN").await.unwrap().as_deref(), Some("00cc"), "replaced");
        let listed: Vec<(String, i64, String)> =
            db.secrets().await.unwrap().into_iter().map(|s| (s.name, s.updated_ms, s.updated_by)).collect();
        assert_eq!(listed, [("B".into(), 2_000, "user b".into()), ("TOKEN".into(), 3_000, "user c".into())]);
        assert!(db.delete_secret("B").await.unwrap());
        assert!(!db.delete_secret("B").await.unwrap(), "already gone");
        assert_eq!(db.sealed_secret("B").await.unwrap(), None);
        db.close().await;
    }
}
