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
    };
    let html = page.render().unwrap();
    assert!(html.contains(r#"<th scope="row">aws</th>"#) && html.contains(r#"<th scope="row">onprem</th>"#), "{html}");
    assert!(html.contains(r#"<span class="state dead">dead</span>"#), "{html}");
    assert!(html.contains("2 of 3 clusters"), "{html}");
    assert!(html.contains(r#"<table data-digest="abc">"#), "the live script knows what the page shows: {html}");
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
    assert!(html.contains(r#"<option value="aws">label aws</option>"#), "{html}");
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
