//! The dashboard's pages as HTML, its CSRF check and cookie reading, and the heatmap's data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::gateway::LinkState;
use atoll_api::gateway::RowCell;
use atoll_api::ids::Term;

use super::*;
use crate::db::clusters::ClusterRow;
use crate::db::matrix::StoredRow;

fn line(name: &str, labels: &[&str], state: &str) -> ClusterLine {
    ClusterLine {
        name: name.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        state: state.into(),
        enabled: true,
        leader: "2".into(),
        term: 7,
        replicas: 3,
        last_seen: "120 ms ago".into(),
        running: 4,
        queued: 1,
    }
}

#[test]
fn the_sign_in_page_has_one_labelled_token_field_and_says_what_went_wrong() {
    let html = LoginPage { message: None }.render().unwrap();
    assert!(html.contains(r#"<label for="token">User token</label>"#), "{html}");
    assert!(html.contains(r#"name="token" type="password""#), "{html}");
    assert_eq!(html.matches("<input").count(), 1, "one field: {html}");
    assert!(!html.contains("role=\"alert\""), "no message without one");
    let html = LoginPage { message: Some("This token is unknown, revoked or expired.".into()) }.render().unwrap();
    assert!(html.contains(r#"<p class="error" role="alert">This token is unknown, revoked or expired.</p>"#), "{html}");
}

#[test]
fn the_clusters_page_lists_and_filters_with_the_user_and_a_csrf_sign_out() {
    let page = ClustersPage {
        page: "clusters",
        user: "ci".into(),
        csrf: "c5rf".into(),
        label_options: vec![("aws".into(), false), ("default".into(), true), ("onprem".into(), false)],
        state_options: vec![("alive", false), ("suspect", false), ("dead", false)],
        total: 3,
        rows: vec![line("aws", &["aws", "default"], "alive"), line("onprem", &["onprem", "default"], "dead")],
        digest: "abc".into(),
        can_admin: false,
    };
    let html = page.render().unwrap();
    assert!(html.contains(r#"<th scope="row">aws</th>"#) && html.contains(r#"<th scope="row">onprem</th>"#), "{html}");
    assert!(html.contains(r#"<span class="state dead">dead</span>"#), "{html}");
    assert!(html.contains("2 of 3 clusters"), "{html}");
    assert!(
        html.contains(r#"<div data-live="clusters" data-digest="abc">"#),
        "the live script knows what the page shows: {html}"
    );
    assert!(!html.contains("/disable"), "no actions without the admin scope: {html}");
    assert!(html.contains(r#"<option value="default" selected>default</option>"#), "the filter shows: {html}");
    assert!(html.contains(r#"<a href="/clusters" aria-current="page">Clusters</a>"#), "{html}");
    assert!(html.contains("signed in as <strong>ci</strong>"), "{html}");
    assert!(
        html.contains(r#"<input type="hidden" name="csrf" value="c5rf">"#),
        "sign-out carries the CSRF value: {html}"
    );
}

#[test]
fn text_from_the_registry_is_escaped() {
    let mut row = line("aws", &["aws"], "alive");
    row.last_seen = "<script>alert(1)</script>".into();
    let page = ClustersPage {
        page: "clusters",
        user: "<b>".into(),
        csrf: "x".into(),
        label_options: vec![],
        state_options: vec![],
        total: 1,
        rows: vec![row],
        digest: "abc".into(),
        can_admin: false,
    };
    let html = page.render().unwrap();
    assert!(
        !html.contains("<script>alert") && html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<strong><b></strong>"), "{html}");
}

#[test]
fn the_matrix_page_is_a_labelled_canvas_and_the_gateways_page_marks_the_holder() {
    let html =
        MatrixPage { page: "matrix", user: "u".into(), csrf: "c".into(), count: 3, label_keys: vec!["aws".into()] }
            .render()
            .unwrap();
    assert!(
        html.contains(r#"<canvas id="matrix""#) && html.contains("Directed reachability between 3 clusters"),
        "{html}"
    );
    assert!(html.contains(r#"<script src="/static/matrix.js"></script>"#), "{html}");
    assert!(html.contains(r#"<option value="*">label set</option>"#), "{html}");
    assert!(html.contains(r#"<option value="aws">label aws first</option>"#), "{html}");
    assert!(html.contains(r#"<ul id="groups""#), "the groups are listed in words too: {html}");
    let html = GatewaysPage {
        page: "gateways",
        user: "u".into(),
        csrf: "c".into(),
        rows: vec![
            atoll_api::gateway::GatewayReplica {
                id: "g1".into(),
                addr: "10.0.0.1:7000".into(),
                holds_lease: true,
                generation: 4,
                last_seen_ms: 300,
            },
            atoll_api::gateway::GatewayReplica {
                id: "g2".into(),
                addr: "10.0.0.2:7000".into(),
                holds_lease: false,
                generation: 3,
                last_seen_ms: 800,
            },
        ],
    }
    .render()
    .unwrap();
    assert_eq!(html.matches("<strong>holds it</strong>").count(), 1, "{html}");
}

#[test]
fn csrf_values_must_match_and_cookies_are_read_by_name() {
    let signed = Signed { user: "u".into(), scopes: vec![Scope::Read], csrf: "abc".into(), id_hash: "h".into() };
    assert!(check_csrf(&signed, &CsrfForm { csrf: "abc".into() }).is_ok());
    for bad in ["", "abd", "abcd"] {
        let refused = check_csrf(&signed, &CsrfForm { csrf: bad.into() }).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{bad:?}");
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, HeaderValue::from_static("theme=dark; atoll_session=s1d; other=x"));
    assert_eq!(cookie_value(&headers, COOKIE), Some("s1d"));
    assert_eq!(cookie_value(&headers, "missing"), None);
}

#[test]
fn the_heatmap_data_is_a_character_per_directed_cell() {
    let cluster = |name: &str, labels: &[&str]| ClusterRow {
        name: name.parse().unwrap(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        enabled: true,
        revoked_ms: None,
        term: Term(1),
        leader_id: Some(1),
        endpoint: None,
        replicas: vec![],
        registered_ms: Some(0),
        last_seen_ms: Some(1_000),
        capabilities: None,
    };
    let clusters = vec![cluster("aws", &["aws"]), cluster("gcp", &["gcp"]), cluster("onprem", &["onprem"])];
    let cell = |to: &str, state| RowCell { to: to.into(), state, rtt_ms: Some(2.0), loss: 0.0 };
    let row = |reporter: &str, cells| {
        Arc::new(StoredRow { reporter: reporter.into(), term: Term(1), cells, reported_ms: 1_000 })
    };
    let mut rows = BTreeMap::new();
    // aws cannot reach onprem, onprem reaches aws; gcp never reported.
    rows.insert(
        "aws".to_string(),
        row("aws", vec![cell("gcp", LinkState::Reachable), cell("onprem", LinkState::Unreachable)]),
    );
    rows.insert(
        "onprem".to_string(),
        row("onprem", vec![cell("aws", LinkState::Reachable), cell("gcp", LinkState::Unreachable)]),
    );
    let data = matrix_data(&clusters, &rows, 1_500, Duration::from_secs(5));
    assert_eq!(data.names, vec!["aws", "gcp", "onprem"]);
    assert_eq!(data.labels[2], vec!["onprem".to_string()]);
    // Row-major, from * 3 + to; the diagonal is unknown (nobody probes itself).
    assert_eq!(data.states, "?ru???ru?", "aws->gcp r, aws->onprem u, gcp unknown, onprem->aws r, onprem->gcp u");
    assert_eq!(&data.modes[2..3], "d", "aws->onprem goes direct: onprem reaches aws (push)");
    assert_eq!(data.states.len(), 9);
}

#[test]
fn an_admin_sees_enable_and_disable_forms_that_carry_the_csrf_value() {
    let mut off = line("gcp", &["gcp"], "alive");
    off.enabled = false;
    let html = ClustersPage {
        page: "clusters",
        user: "root".into(),
        csrf: "c5rf".into(),
        label_options: vec![],
        state_options: vec![],
        total: 2,
        rows: vec![line("aws", &["aws"], "alive"), off],
        digest: "d".into(),
        can_admin: true,
    }
    .render()
    .unwrap();
    assert!(html.contains(r#"action="/clusters/aws/disable""#), "{html}");
    assert!(html.contains(r#"action="/clusters/gcp/enable""#), "{html}");
    assert!(html.contains(r#"aria-label="Enable gcp""#), "{html}");
    assert_eq!(html.matches(r#"<input type="hidden" name="csrf" value="c5rf">"#).count(), 3, "two rows and sign-out");
}

mod pipelines {
    use atoll_api::ids::JobId;
    use atoll_api::jobs::AttemptInfo;
    use atoll_api::jobs::AttemptState;
    use atoll_api::jobs::InputInfo;
    use atoll_api::jobs::JobDetail;
    use atoll_api::jobs::JobInfo;
    use atoll_api::jobs::JobState;
    use atoll_api::jobs::OutputInfo;
    use atoll_api::jobs::Route;
    use atoll_api::jobs::RouteTaken;
    use atoll_api::jobs::Submitted;

    use super::super::jobs::*;
    use super::*;
    use crate::db::jobs::PipelineSummary;

    fn job(name: &str, state: JobState, cluster: Option<&str>, inputs: &[(&str, Option<Route>)]) -> JobInfo {
        JobInfo {
            name: name.into(),
            id: JobId::new("p1", name),
            pipeline: "p1".into(),
            cluster: cluster.map(|c| c.parse().unwrap()),
            state,
            attempts: 1,
            inputs: inputs
                .iter()
                .map(|(from, route)| InputInfo {
                    from_job: from.to_string(),
                    mode: route.map(Route::mode),
                    route: *route,
                    digest: None,
                })
                .collect(),
            reason: None,
            exit_code: None,
            output: None,
            cancel_requested: false,
            created_ms: 1_700_000_000_000,
            finished_ms: None,
        }
    }

    fn taken(from: &str, cluster: &str, route: Route, at_ms: i64, reason: Option<&str>) -> RouteTaken {
        RouteTaken {
            from_job: from.into(),
            from_cluster: cluster.parse().unwrap(),
            route,
            at_ms,
            reason: reason.map(str::to_string),
        }
    }

    fn signed(scopes: Vec<Scope>) -> Signed {
        Signed { user: "ci".into(), scopes, csrf: "c5rf".into(), id_hash: "h".into() }
    }

    /// build (aws) -> test (onprem, pull) -> mirror (gcp, a push that fell back to the relay).
    fn example() -> (Submitted, Vec<(String, u32, RouteTaken)>) {
        let jobs = vec![
            job("build", JobState::Finished, Some("aws"), &[]),
            job("test", JobState::Finished, Some("onprem"), &[("build", Some(Route::Pull))]),
            job("mirror", JobState::Running, Some("gcp"), &[("test", Some(Route::Relay))]),
            job("report", JobState::Waiting, None, &[("test", None), ("mirror", None)]),
            job("gate", JobState::Finished, None, &[("build", None)]),
        ];
        let routes = vec![
            ("p1.test".to_string(), 1, taken("build", "aws", Route::Pull, 1_700_000_001_000, None)),
            ("p1.mirror".to_string(), 1, taken("test", "onprem", Route::Push, 1_700_000_002_000, None)),
            (
                "p1.mirror".to_string(),
                1,
                taken("test", "onprem", Route::Relay, 1_700_000_003_000, Some("connection refused")),
            ),
        ];
        (Submitted { pipeline: "p1".into(), jobs }, routes)
    }

    #[test]
    fn the_dag_puts_each_job_right_of_its_deepest_parent_without_overlaps() {
        let (submitted, routes) = example();
        let dag = super::super::dag::layout(&submitted.jobs, &routes);
        let x = |name: &str| dag.nodes.iter().find(|n| n.name == name).unwrap().x;
        assert!(x("build") < x("test") && x("test") < x("mirror") && x("mirror") < x("report"));
        for (i, a) in dag.nodes.iter().enumerate() {
            for b in &dag.nodes[i + 1..] {
                assert!((a.x, a.y) != (b.x, b.y), "{} and {} overlap", a.name, b.name);
            }
            assert!(a.x + super::super::dag::NODE_W <= dag.width && a.y + super::super::dag::NODE_H <= dag.height);
        }
        assert_eq!(dag.edges.len(), 5);
        let order_only = dag.edges.iter().find(|e| e.to == "gate").unwrap();
        assert_eq!(order_only.route, "none", "a wait job's edges move nothing");
        let mirror = dag.edges.iter().find(|e| e.to == "mirror").unwrap();
        assert_eq!(mirror.route, "relay");
        assert!(mirror.fell_back);
        assert_eq!(mirror.history.len(), 2);
        assert!(
            mirror.history[1].contains("relay from onprem") && mirror.history[1].ends_with("after: connection refused")
        );
        let unplaced = dag.edges.iter().find(|e| e.to == "report" && e.from == "test").unwrap();
        assert_eq!(unplaced.route, "unplaced");
        // An empty pipeline is an empty drawing, not a panic.
        let empty = super::super::dag::layout(&[], &[]);
        assert!(empty.nodes.is_empty() && empty.width > 0);
    }

    #[test]
    fn the_pipeline_page_marks_each_edge_with_its_route_and_shows_fallbacks() {
        let (submitted, routes) = example();
        let html = pipeline_page(signed(vec![Scope::Read]), &submitted, &routes, "dg".into()).render().unwrap();
        assert!(html.contains(r#"data-events="/events?watch=pipeline:p1""#), "{html}");
        assert!(html.contains(r#"<div data-live="pipeline" data-digest="dg">"#), "{html}");
        assert!(html.contains(r#"id="pipeline-status">running</span>"#), "{html}");
        assert!(html.contains(r#"data-from="test" data-to="mirror" data-route="relay""#), "{html}");
        assert!(html.contains(r#"class="edge route-relay fell-back""#), "{html}");
        assert!(html.contains(r#"class="edge route-pull""#), "{html}");
        assert!(
            html.contains(
                r#"<a href="/jobs/p1.build" class="node state-finished" data-job="build" data-state="finished""#
            ),
            "{html}"
        );
        assert!(html.contains("attempt 1: push from onprem at 2023-11-14 22:13:22.000 UTC"), "{html}");
        assert!(html.contains("after: connection refused"), "{html}");
        assert!(html.contains("↺ fell back"), "{html}");
        assert!(html.contains("none yet"), "an unplaced edge has no routes yet: {html}");
        assert!(html.contains(r#"<a href="/pipelines" aria-current="page">Pipelines</a>"#), "{html}");
    }

    #[test]
    fn the_pipelines_page_lists_with_a_status_filter() {
        let summaries = vec![
            PipelineSummary {
                id: "p2".into(),
                submitted_by: "user ci".into(),
                created_ms: 1_700_000_000_000,
                jobs: vec![(JobState::Finished, 3), (JobState::Running, 1)],
            },
            PipelineSummary {
                id: "p1".into(),
                submitted_by: "user ci".into(),
                created_ms: 1_600_000_000_000,
                jobs: vec![(JobState::Failure, 1), (JobState::Finished, 2)],
            },
        ];
        let all = pipeline_lines(&summaries, "");
        assert_eq!(
            all.iter().map(|l| (l.id.as_str(), l.status)).collect::<Vec<_>>(),
            [("p2", "running"), ("p1", "failed")]
        );
        assert_eq!(all[0].jobs, "3 finished, 1 running");
        let failed = pipeline_lines(&summaries, "failed");
        assert_eq!(failed.len(), 1);
        let html = PipelinesPage {
            page: "pipelines",
            user: "ci".into(),
            csrf: "c".into(),
            events: "/events?watch=pipelines".into(),
            status_options: vec![("running", false), ("failed", true)],
            listed: 200,
            total: 2,
            rows: failed,
            digest: "d".into(),
        }
        .render()
        .unwrap();
        assert!(html.contains(r#"<a href="/pipelines/p1">p1</a>"#), "{html}");
        assert!(html.contains(r#"<option value="failed" selected>failed</option>"#), "{html}");
        assert!(html.contains("1 of the 2 newest pipelines"), "{html}");
        assert_eq!(pipeline_status(&[(JobState::Finished, 2), (JobState::Skipped, 1)]), "finished");
        assert_eq!(pipeline_status(&[(JobState::Finished, 2), (JobState::Unstable, 1)]), "unstable");
        assert_eq!(pipeline_status(&[(JobState::Killed, 1), (JobState::Queued, 1)]), "running");
    }

    fn detail(state: JobState) -> JobDetail {
        let mut job = job("mirror", state, Some("gcp"), &[("test", Some(Route::Relay))]);
        job.exit_code = Some(0);
        job.output = Some(OutputInfo { digest: format!("sha256:{}", "ab".repeat(32)), size: 1234 });
        JobDetail {
            job,
            attempts: vec![AttemptInfo {
                attempt: 1,
                cluster: "gcp".parse().unwrap(),
                state: AttemptState::Ended(JobState::Finished),
                term: Some(Term(3)),
                exit_code: Some(0),
                message: Some("exit 0".into()),
                bound_ms: 1_700_000_000_000,
                started_ms: Some(1_700_000_000_500),
                ended_ms: Some(1_700_000_001_000),
                routes: vec![taken("test", "onprem", Route::Relay, 1_700_000_000_100, Some("connection refused"))],
            }],
            log_truncated: false,
        }
    }

    #[test]
    fn the_job_page_shows_attempts_output_and_the_log_and_offers_cancel_only_with_the_scope() {
        let html = job_page(signed(vec![Scope::Submit]), detail(JobState::Running)).render().unwrap();
        assert!(html.contains(r#"action="/jobs/p1.mirror/cancel""#), "submit scope, running: {html}");
        assert!(html.contains(r#"<input type="hidden" name="csrf" value="c5rf">"#), "{html}");
        assert!(html.contains(&format!("<code>sha256:{}</code>, 1234 bytes", "ab".repeat(32))), "{html}");
        assert!(html.contains("<td>finished</td><td>3</td><td>0</td>"), "attempt: state, term, exit code: {html}");
        assert!(
            html.contains("test from onprem: relay at 2023-11-14 22:13:20.100 UTC (fell back: connection refused)"),
            "{html}"
        );
        assert!(html.contains(r#"<pre id="log" class="log" data-job="p1.mirror""#), "{html}");
        assert!(html.contains(r#"<script src="/static/log.js"></script>"#), "{html}");
        assert!(html.contains(r#"data-events="/events?watch=job:p1.mirror""#), "{html}");
        let html = job_page(signed(vec![Scope::Read]), detail(JobState::Running)).render().unwrap();
        assert!(!html.contains("/cancel"), "read scope: no cancel: {html}");
        let html = job_page(signed(vec![Scope::Admin]), detail(JobState::Finished)).render().unwrap();
        assert!(!html.contains("/cancel"), "an ended job cannot be cancelled: {html}");
    }

    #[test]
    fn what_an_event_stream_watches_is_checked() {
        assert_eq!(Watch::parse(None), Ok(Watch::ClustersAndMatrix));
        assert_eq!(Watch::parse(Some("pipelines")), Ok(Watch::Pipelines));
        assert_eq!(Watch::parse(Some("pipeline:p1")), Ok(Watch::Pipeline("p1".into())));
        assert_eq!(Watch::parse(Some("job:p1.build")), Ok(Watch::Job("p1.build".into())));
        for bad in ["job:", "cluster:aws", "everything"] {
            let e = Watch::parse(Some(bad)).unwrap_err();
            assert!(e.contains(bad) && e.contains("pipeline:ID"), "{e}");
        }
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_ne!(digest_of(&detail(JobState::Running)), digest_of(&detail(JobState::Finished)));
    }
}
