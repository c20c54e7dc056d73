use proptest::prelude::*;

use super::*;

fn problems(text: &str) -> Vec<String> {
    parse(text).expect_err("the spec should be refused").0.iter().map(ToString::to_string).collect()
}

/// Asserts that `found` holds a problem at `path` whose message contains `words`, and names the
/// list on failure.
fn has(found: &[String], path: &str, words: &str) {
    let prefix = format!("{path}: ");
    assert!(
        found.iter().any(|p| p.starts_with(&prefix) && p.contains(words)),
        "no problem at {path} saying {words:?} in:\n{}",
        found.join("\n")
    );
}

fn on(words: &[&str]) -> BTreeSet<OnState> {
    words.iter().map(|w| OnState::parse(w).unwrap()).collect()
}

#[test]
fn an_infrabox_file_with_every_on_variant_parses() {
    let spec = parse(include_str!("testdata/infrabox-all-on.json")).unwrap();
    assert_eq!(spec.jobs.len(), 7);
    let job = |name: &str| spec.jobs.iter().find(|j| j.name == name).unwrap();

    let compile = job("compile");
    assert_eq!(compile.kind, JobKind::DockerImage);
    assert_eq!(compile.image.as_deref(), Some("debian:12"));
    assert_eq!(compile.command, Some(Command::Argv(vec!["make".into(), "-j2".into(), "all".into()])));
    assert_eq!(compile.resources, Resources { cpu_millis: Some(1000), memory_mib: Some(1024) });
    assert_eq!(compile.environment["JOBS"], "2");
    assert_eq!(compile.environment["VERBOSE"], "true");
    assert_eq!(compile.timeout_s, 1800);

    let tests = job("unit-tests");
    assert_eq!(tests.depends_on, vec![Dependency { job: "compile".into(), on: on(&["finished"]) }]);
    assert_eq!(tests.resources.cpu_millis, Some(500));
    assert_eq!(tests.timeout_s, DEFAULT_TIMEOUT_S);
    assert_eq!(tests.cluster.selector, vec!["aws".parse().unwrap()]);

    assert_eq!(job("on-error").depends_on[0].on, on(&["error"]));
    assert_eq!(job("on-failure").depends_on[0].on, on(&["failure"]));
    assert_eq!(job("on-unstable-or-finished").depends_on[0].on, on(&["unstable", "finished"]));
    let always = job("always");
    assert_eq!(always.depends_on[0].on, on(&["*"]));
    assert_eq!(always.depends_on[1].on, on(&["finished", "failure", "error"]));
    assert_eq!(always.cluster.prefer, Some("onprem".parse().unwrap()));
    assert_eq!(always.retries, 2);
    let gate = job("gate");
    assert_eq!(gate.kind, JobKind::Wait);
    assert!(!gate.runs_on_a_cluster());
    assert_eq!(gate.depends_on[1], Dependency { job: "always".into(), on: on(&["finished"]) });
}

#[test]
fn yaml_with_duration_and_quantity_forms_parses() {
    let spec = parse(include_str!("testdata/pipeline.yaml")).unwrap();
    let build = &spec.jobs[0];
    assert_eq!(build.timeout_s, 1800);
    assert_eq!(build.resources, Resources { cpu_millis: Some(500), memory_mib: Some(2048) });
    assert!(matches!(&build.command, Some(Command::Shell(s)) if s.contains("ATOLL_OUTPUT")));
    assert_eq!(spec.jobs[2].depends_on[0].on, on(&["*"]));
}

#[test]
fn on_conditions_allow_exactly_their_states() {
    let dep = |words: &[&str]| Dependency { job: "p".into(), on: on(words) };
    assert!(dep(&["finished"]).allows(FinalState::Finished));
    assert!(!dep(&["finished"]).allows(FinalState::Failure));
    assert!(dep(&["failure", "error"]).allows(FinalState::Error));
    assert!(!dep(&["failure", "error"]).allows(FinalState::Killed));
    for state in FinalState::ALL {
        assert!(dep(&["*"]).allows(state), "* allows {state}");
    }
    assert_eq!(OnState::parse("skipped"), None, "`skipped` is a state, not a condition");
}

#[test]
fn every_problem_of_a_malformed_file_is_reported_with_its_path() {
    let found = problems(include_str!("testdata/malformed.json"));
    has(&found, "version", "unsupported version 2");
    has(&found, "extra", "unknown key");
    has(&found, "jobs[0].name", "lowercase letters");
    has(&found, "jobs[1].type", "unknown job type \"dockerfile\"");
    has(&found, "jobs[2].command", "missing");
    has(&found, "jobs[3].timeout", "must be seconds");
    has(&found, "jobs[3].resources.limits.cpu", "out of range");
    has(&found, "jobs[3].resources.limits.memory", "must be MiB");
    has(&found, "jobs[3].environment.ATOLL_JOB_ID", "set by the executor");
    has(&found, "jobs[3].environment.1X", "variable name");
    has(&found, "jobs[3].environment.OK", "must be a string");
    has(&found, "jobs[3].retries", "out of range");
    has(&found, "jobs[3].colour", "unknown key");
    has(&found, "jobs[3].colour", "docs/job-spec.md");
    has(&found, "jobs[4].depends_on[0]", "unknown job \"nope\"");
    has(&found, "jobs[4].depends_on[1]", "depends on itself");
    has(&found, "jobs[4].depends_on[3]", "depends on \"c\" twice");
    has(&found, "jobs[4].depends_on[4].on", "empty");
    has(&found, "jobs[4].depends_on[5].on[0]", "unknown state \"sometimes\"");
    has(&found, "jobs[4].depends_on[6]", "must be a job name");
    has(&found, "jobs[4].cluster.selector[0]", "label \"UPPER\" is invalid");
    has(&found, "jobs[4].cluster.selector[2]", "listed twice");
    has(&found, "jobs[4].cluster.prefer", "cluster name \"Not_A_Cluster\" is invalid");
    has(&found, "jobs[5].name", "duplicate job name \"c\" (first at jobs[3])");
    has(&found, "jobs[5].command", "wait job runs nothing");
    has(&found, "jobs[5].cluster", "runs on no cluster");
    has(&found, "jobs[6].image", "missing");
    has(&found, "jobs[7]", "must be a map");
    // a parent that failed to parse is still known by name: its children get no second problem
    assert!(!found.iter().any(|p| p.contains("unknown job \"a\"")), "{found:?}");
    let text = parse(include_str!("testdata/malformed.json")).unwrap_err().to_string();
    assert!(text.starts_with(&format!("{} problems in the job spec:\n  extra: ", found.len())), "{text}");
    let jobs_seen: Vec<usize> = found.iter().filter_map(|p| job_index(p.split(':').next().unwrap())).collect();
    assert!(jobs_seen.is_sorted(), "problems come in document order: {found:?}");
}

#[test]
fn sources_are_digests_on_the_pipeline_or_a_command_job() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let spec = parse(&format!(
        "version: 1\nsource: {digest}\njobs:\n  - {{name: a, type: command, command: x}}\n  - {{name: b, type: command, command: x, source: {digest}}}\n"
    ))
    .unwrap();
    assert_eq!(spec.source.as_deref(), Some(digest.as_str()));
    assert_eq!((spec.jobs[0].source.as_deref(), spec.jobs[1].source.as_deref()), (None, Some(digest.as_str())));
    let found = problems(
        "version: 1\nsource: latest\njobs:\n  - {name: a, type: command, command: x, source: 'sha256:AB'}\n  - {name: w, type: wait, source: 'sha256:00'}\n",
    );
    has(&found, "source", "not a source digest");
    has(&found, "jobs[0].source", "not a source digest");
    has(&found, "jobs[1].source", "a wait job runs nothing");
}

#[test]
fn every_cycle_is_found_and_named() {
    let found = problems(include_str!("testdata/cycles.yaml"));
    assert_eq!(found.len(), 2, "{found:?}");
    has(&found, "jobs[0].depends_on[0]", "dependency cycle: a -> c -> b -> a");
    has(&found, "jobs[3].depends_on[0]", "dependency cycle: x -> y -> x");
}

#[test]
fn a_cycle_is_reported_alongside_problems_of_its_jobs() {
    let found = problems(
        "version: 1
jobs:
  - {name: a, type: command, command: x, depends_on: [b], environment: {1X: y}}
  - {name: b, type: command, command: x, depends_on: [free, a], timeout: never}
  - {name: free, type: wait}
  - {name: 'Not A Name', type: wait, depends_on: [a]}
",
    );
    has(&found, "jobs[0].environment.1X", "variable name");
    has(&found, "jobs[1].timeout", "must be seconds");
    has(&found, "jobs[0].depends_on[0]", "dependency cycle: a -> b -> a");
    has(&found, "jobs[3].name", "lowercase letters");
    assert_eq!(found.len(), 4, "{found:?}");
    // a job depending on itself is told so once, not also as a cycle
    let found = problems("version: 1\njobs: [{name: a, type: wait, depends_on: [a]}]");
    assert_eq!(found, ["jobs[0].depends_on[0]: job \"a\" depends on itself"]);
}

#[test]
fn duplicate_keys_are_refused_with_their_path_in_yaml() {
    let found = problems(
        "version: 1
jobs:
  - name: a
    type: command
    name: b
    command: x
    environment:
      X: '1'
      X: '2'
    resources: {limits: {cpu: 1, cpu: 2}}
    depends_on: [{job: c, on: [finished], job: d}]
  - {name: c, type: wait, timeout: 5}
version: 1
",
    );
    has(&found, "version", "duplicate key \"version\"");
    has(&found, "jobs[0].name", "duplicate key \"name\"");
    has(&found, "jobs[0].environment.X", "duplicate key \"X\"");
    has(&found, "jobs[0].resources.limits.cpu", "duplicate key \"cpu\"");
    has(&found, "jobs[0].depends_on[0].job", "duplicate key \"job\"");
    // every other problem in the same run
    has(&found, "jobs[1].timeout", "a wait job runs nothing");
    assert_eq!(found.len(), 6, "{found:?}");
    assert!(parse_document("version: 1\nversion: 1\njobs: []").is_err());
}

#[test]
fn duplicate_keys_are_refused_with_their_path_in_json() {
    let found = problems(
        r#"{"version": 1, "jobs": [
            {"name": "a", "name": "b", "type": "command", "command": "x",
             "environment": {"X": "1", "X": "2"},
             "cluster": {"selector": ["aws"], "prefer": "aws", "selector": ["gcp"]}},
            {"name": "c", "type": "command", "command": "x", "retries": -1}
        ], "jobs": []}"#,
    );
    has(&found, "jobs", "duplicate key \"jobs\"");
    has(&found, "jobs[0].name", "duplicate key \"name\"");
    has(&found, "jobs[0].environment.X", "duplicate key \"X\"");
    has(&found, "jobs[0].cluster.selector", "duplicate key \"selector\"");
    has(&found, "jobs[1].retries", "must be a whole number");
    assert_eq!(found.len(), 5, "{found:?}");

    // the gateway reads a submission's spec as a `Document`: duplicates sent over HTTP are
    // found there too, with paths inside the spec
    #[derive(serde::Deserialize)]
    struct Body {
        spec: Document,
    }
    let body: Body =
        serde_json::from_str(r#"{"spec": {"version": 1, "jobs": [{"name": "a", "type": "wait", "type": "command"}]}}"#)
            .unwrap();
    let found: Vec<String> = from_document(&body.spec).unwrap_err().0.iter().map(ToString::to_string).collect();
    assert_eq!(found, ["jobs[0].type: duplicate key \"type\""]);
}

#[test]
fn number_problems_name_the_format_that_was_read() {
    let found = problems(
        "version: 1
jobs:
  - {name: a, type: command, command: x, retries: 99999999999999999999, timeout: .inf, environment: {X: .nan}}
",
    );
    has(&found, "jobs[0].retries", "99999999999999999999 is out of range");
    has(&found, "jobs[0].timeout", ".inf is not a finite number");
    has(&found, "jobs[0].environment.X", ".nan is not a finite number");
    // no second problem about the `null` each refused value stands as
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(!found.concat().contains("JSON"), "{found:?}");

    let found = problems("version: 1\njobs: !tagged [1]");
    assert!(found[0].starts_with("not valid YAML: ") && found[0].contains("a YAML value"), "{found:?}");
    assert!(!found[0].contains("JSON"), "{found:?}");
    let found =
        problems(r#"{"version": 1, "jobs": [{"name": "a", "type": "command", "command": "x", "retries": 1e400}]}"#);
    assert!(found[0].starts_with("not valid JSON: ") && !found[0].contains("YAML"), "{found:?}");
}

#[test]
fn control_characters_from_the_document_are_escaped_in_every_problem() {
    let yaml = r#"version: 1
jobs:
  - name: "a\0b"
    type: "c\eommand"
    command: x
    timeout: "\x7f"
    environment: {"A\0B\eC": y, "D.E": z}
    "col\tour": red
    depends_on: ["p\nq", {job: x, on: ["\e"]}]
    cluster: {selector: ["l\u0085x"], prefer: "\0"}
    "\0": 1
    "\0": 2
"#;
    let found = problems(yaml);
    for p in &found {
        assert!(!p.chars().any(char::is_control), "a raw control character in {p:?}");
    }
    has(&found, r#"jobs[0].environment."A\0B\u{1b}C""#, r#""A\0B\u{1b}C": a variable name"#);
    has(&found, r#"jobs[0].environment."D.E""#, "a variable name");
    has(&found, r#"jobs[0]."col\tour""#, "unknown key");
    has(&found, "jobs[0].name", r#""a\0b": a job name"#);
    has(&found, "jobs[0].type", r#"unknown job type "c\u{1b}ommand""#);
    has(&found, "jobs[0].timeout", r#"found "\u{7f}""#);
    has(&found, "jobs[0].depends_on[0]", r#"unknown job "p\nq""#);
    has(&found, "jobs[0].depends_on[1].on[0]", r#"unknown state "\u{1b}""#);
    has(&found, "jobs[0].cluster.selector[0]", r#"label "l\u{85}x" is invalid"#);
    has(&found, "jobs[0].cluster.prefer", r#"cluster name "\0" is invalid"#);
    has(&found, r#"jobs[0]."\0""#, r#"duplicate key "\0""#);

    let found =
        problems(r#"{"version": 1, "jobs": [{"name": "a", "type": "wait", "environment": {"\u0000": "\u001b"}}]}"#);
    has(&found, r#"jobs[0].environment."\0""#, "a variable name");
    assert!(found.iter().all(|p| !p.chars().any(char::is_control)), "{found:?}");
}

#[test]
fn a_long_chain_is_ordered_and_a_long_cycle_found_without_deep_recursion() {
    let chain = |cycle: bool| {
        let mut jobs = vec![serde_json::json!({"name": "j0", "type": "wait"})];
        if cycle {
            jobs[0]["depends_on"] = serde_json::json!(["j9999"]);
        }
        for i in 1..10_000 {
            jobs.push(
                serde_json::json!({"name": format!("j{i}"), "type": "wait", "depends_on": [format!("j{}", i - 1)]}),
            );
        }
        serde_json::json!({"version": 1, "jobs": jobs})
    };
    let spec = from_value(&chain(false)).unwrap();
    let order = topological_order(&spec);
    assert_eq!(order, (0..10_000).collect::<Vec<_>>());
    let err = from_value(&chain(true)).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].message.starts_with("dependency cycle: j0 -> j9999 -> j9998"), "{}", err.0[0]);
}

#[test]
fn documents_that_are_not_pipelines_are_refused_plainly() {
    assert_eq!(problems("{"), vec![problems("{")[0].clone()]);
    assert!(problems("{").concat().starts_with("not valid JSON"));
    assert!(problems("jobs: [").concat().starts_with("not valid YAML"));
    assert!(problems("[1, 2]")[0].contains("must be a map, found a list"));
    let found = problems("version: 1");
    has(&found, "jobs", "missing");
    let empty = parse("version: 1\njobs: []").expect("an empty pipeline reads, as in InfraBox");
    assert_eq!(unsupported(&empty)[0].to_string(), "jobs: empty: a pipeline with no jobs runs nothing");
    let found = problems("jobs: [{name: a, type: wait}]");
    has(&found, "version", "missing");
}

fn facts<'a>(clusters: &'a [(ClusterName, Vec<Label>, bool)]) -> Vec<ClusterFacts<'a>> {
    clusters
        .iter()
        .map(|(name, labels, enabled)| ClusterFacts { name, labels, enabled: *enabled, capabilities: None })
        .collect()
}

#[test]
fn a_job_type_this_build_does_not_know_is_left_out_of_what_a_cluster_runs() {
    let caps: Capabilities =
        serde_json::from_str(r#"{"executor": "process", "runs": ["command", "quantum"], "secrets": true}"#).unwrap();
    assert_eq!(caps.runs, [JobKind::Command]);
}

#[test]
fn selectors_and_prefer_are_checked_against_enabled_clusters() {
    let clusters = vec![
        ("aws".parse().unwrap(), vec!["aws".parse().unwrap(), "default".parse().unwrap()], true),
        ("gcp".parse().unwrap(), vec!["gcp".parse().unwrap()], false),
    ];
    let spec = parse(
        "version: 1
jobs:
  - {name: ok, type: command, command: 'true', cluster: {selector: [default]}}
  - {name: any, type: command, command: 'true'}
  - {name: nowhere, type: command, command: 'true', cluster: {selector: [aws, gpu]}}
  - {name: disabled, type: command, command: 'true', cluster: {selector: [gcp], prefer: gcp}}
  - {name: stranger, type: command, command: 'true', cluster: {prefer: azure}}
  - {name: mismatch, type: command, command: 'true', cluster: {selector: [aws], prefer: gcp}}
  - {name: gate, type: wait}
",
    )
    .unwrap();
    let found: Vec<String> =
        check_clusters(&spec, &facts(&clusters)).unwrap_err().0.iter().map(ToString::to_string).collect();
    has(
        &found,
        "jobs[2].cluster.selector",
        "no enabled cluster has all of [aws, gpu] (clusters: aws [aws, default]; gcp [gcp] (disabled))",
    );
    has(&found, "jobs[3].cluster.selector", "no enabled cluster");
    has(&found, "jobs[3].cluster.prefer", "that cluster is disabled");
    has(&found, "jobs[4].cluster.prefer", "no such cluster is registered");
    has(&found, "jobs[5].cluster.prefer", "disabled");
    assert_eq!(found.len(), 5, "{found:?}");
    let none: Vec<(ClusterName, Vec<Label>, bool)> = Vec::new();
    let found = check_clusters(&spec, &facts(&none)).unwrap_err().to_string();
    assert!(found.contains("none registered"), "{found}");
}

#[test]
fn a_checked_spec_survives_a_json_round_trip() {
    let spec = parse(include_str!("testdata/infrabox-all-on.json")).unwrap();
    let text = serde_json::to_string(&spec).unwrap();
    let back: PipelineSpec = serde_json::from_str(&text).unwrap();
    assert_eq!(back, spec);
}

/// Arbitrary JSON values, nested a few levels, biased towards spec-like keys so the walk goes
/// deep rather than stopping at the first unknown key.
fn arbitrary_value() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("name".to_string()),
        Just("type".to_string()),
        Just("command".to_string()),
        Just("depends_on".to_string()),
        Just("on".to_string()),
        Just("job".to_string()),
        Just("jobs".to_string()),
        Just("version".to_string()),
        Just("resources".to_string()),
        Just("limits".to_string()),
        Just("cpu".to_string()),
        Just("memory".to_string()),
        Just("timeout".to_string()),
        Just("cluster".to_string()),
        Just("selector".to_string()),
        Just("environment".to_string()),
        "[a-z*]{0,6}",
        "[a-z\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]{0,4}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        prop_oneof![Just("a".to_string()), Just("*".to_string()), Just("1".to_string()), ".{0,8}"]
            .prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = parse(&text);
    }

    #[test]
    fn checking_arbitrary_documents_never_panics(jobs in prop::collection::vec(arbitrary_value(), 0..8)) {
        let doc = serde_json::json!({"version": 1, "jobs": jobs});
        if let Err(errors) = from_value(&doc) {
            prop_assert!(!errors.0.is_empty());
            for p in &errors.0 {
                let shown = p.to_string();
                prop_assert!(!shown.chars().any(char::is_control), "a raw control character in {:?}", shown);
            }
        }
        let _ = parse(&doc.to_string());
    }

    #[test]
    fn random_graphs_are_accepted_exactly_when_acyclic(
        edges in prop::collection::vec((0usize..8, 0usize..8), 0..16),
        broken in prop::option::of(0usize..8),
    ) {
        let mut deps = vec![std::collections::BTreeSet::new(); 8];
        for (child, parent) in &edges {
            if child != parent {
                deps[*child].insert(*parent);
            }
        }
        let mut jobs: Vec<serde_json::Value> = (0..8)
            .map(|i| serde_json::json!({"name": format!("j{i}"), "type": "wait",
                "depends_on": deps[i].iter().map(|p| format!("j{p}")).collect::<Vec<_>>()}))
            .collect();
        // a problem of one job's own must not hide a cycle
        if let Some(b) = broken {
            jobs[b]["timeout"] = serde_json::json!(5);
        }
        let result = from_value(&serde_json::json!({"version": 1, "jobs": jobs}));
        // a brute-force check: repeatedly remove jobs without remaining parents
        let mut left: std::collections::BTreeSet<usize> = (0..8).collect();
        loop {
            let free: Vec<usize> = left.iter().copied().filter(|&i| deps[i].iter().all(|p| !left.contains(p))).collect();
            if free.is_empty() { break; }
            for i in free { left.remove(&i); }
        }
        let cycle_found = result.as_ref().err().is_some_and(|e| e.0.iter().any(|p| p.message.starts_with("dependency cycle")));
        prop_assert_eq!(cycle_found, !left.is_empty(), "{:?}", result.as_ref().err());
        prop_assert_eq!(result.is_ok(), left.is_empty() && broken.is_none(), "{:?}", result.as_ref().err());
        if let Ok(spec) = result {
            let order = topological_order(&spec);
            prop_assert_eq!(order.len(), 8);
            let position: Vec<usize> = { let mut p = vec![0; 8]; for (at, &j) in order.iter().enumerate() { p[j] = at; } p };
            for (child, parents) in deps.iter().enumerate() {
                for &parent in parents { prop_assert!(position[parent] < position[child]); }
            }
        }
    }
}

/// Every `infrabox.json` / `infrabox.yaml` under `testdata/infrabox/DIR`, with its path there.
fn infrabox_files(dir: &str) -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/spec/testdata/infrabox").join(dir);
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(path.file_name().and_then(|n| n.to_str()), Some("infrabox.json" | "infrabox.yaml")) {
                let shown = path.strip_prefix(&root).unwrap().display().to_string();
                out.push((shown, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_pipeline_of_infrabox_s_examples_reads_unchanged() {
    let examples = infrabox_files("examples");
    let included = infrabox_files("git");
    assert_eq!((examples.len(), included.len()), (26, 6), "the files under testdata/infrabox");
    let mut kinds = BTreeSet::new();
    for (file, text) in examples.iter().chain(&included) {
        let spec = parse(text).unwrap_or_else(|e| panic!("{file}: {e}"));
        kinds.extend(spec.jobs.iter().map(|j| j.kind.as_str()));
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["docker", "docker-compose", "docker-image", "git", "workflow"],
        "every InfraBox job type the examples use"
    );
}

#[test]
fn infrabox_keys_are_read_into_the_spec() {
    let read = |name: &str| {
        let (_, text) = infrabox_files("examples").into_iter().find(|(f, _)| f == name).unwrap();
        parse(&text).unwrap()
    };
    let deploy = &read("deploy/infrabox.json").jobs[0];
    assert_eq!(deploy.kind, JobKind::Docker);
    assert_eq!(deploy.container.docker_file.as_deref(), Some("infrabox/test/Dockerfile"));
    assert_eq!(deploy.container.build_only, Some(true));
    assert_eq!(deploy.resources, Resources { cpu_millis: Some(1000), memory_mib: Some(1024) });
    let registry = &deploy.container.deployments[0];
    assert_eq!(
        (registry.kind, registry.host.as_str(), registry.repository.as_deref(), registry.username.as_deref()),
        (RegistryKind::DockerRegistry, "quay.io/infrabox", Some("test"), Some("my_username"))
    );
    assert_eq!(registry.password, Some(SecretRef::Secret("QUAY_PASSWORD".into())));
    let (_, slack) = infrabox_files("git").into_iter().find(|(f, _)| f == "slack/infrabox.json").unwrap();
    let notify = &parse(&slack).unwrap().jobs[0];
    assert_eq!(notify.secret_env.get("SLACK_WEBHOOK_URL"), Some(&SecretRef::Secret("SLACK_WEBHOOK_URL".into())));
    assert!(notify.environment.is_empty(), "a secret is not a plain value");
    let plain = &read("secrets/infrabox.json").jobs[0];
    assert_eq!(plain.environment.get("MY_ENV_VAR").map(String::as_str), Some("hello world"));
    let args = &read("build_arguments/infrabox.json").jobs[0];
    assert_eq!(args.container.build_arguments.get("MY_ARG").map(String::as_str), Some("Some Value"));
    let compose = &read("docker_compose/infrabox.json").jobs[0];
    assert_eq!(compose.container.compose_file.as_deref(), Some("infrabox/test/docker-compose.yml"));
    let flow = &read("workflows/infrabox.json").jobs[0];
    assert_eq!(flow.include, Some(Include::Workflow { infrabox_file: "flow/infrabox.json".into() }));
    assert!(!flow.runs_on_a_cluster());
    let git = read("slack/infrabox.json");
    let external = git.jobs.iter().find(|j| j.kind == JobKind::Git).unwrap();
    assert_eq!(
        external.include,
        Some(Include::Git {
            clone_url: "https://github.com/InfraBox/slack.git".into(),
            commit: "master".into(),
            branch: None,
            infrabox_file: None
        })
    );
    let gke = &read("service_gke/infrabox.json").jobs[0];
    assert_eq!(gke.container.services[0]["kind"], "GKECluster");
    // What only some clusters run is refused where no cluster with the job's labels runs it.
    assert_eq!(unsupported(&read("deploy/infrabox.json")), [], "a docker-registry deployment");
    let engine = Capabilities {
        executor: "process".into(),
        runs: vec![JobKind::Command, JobKind::DockerImage, JobKind::Docker],
        secrets: true,
        registries: true,
        missing: vec!["no compose program (jobs.containers.compose)".into()],
    };
    let (aws, gcp): (ClusterName, ClusterName) = ("aws".parse().unwrap(), "gcp".parse().unwrap());
    let labels: Vec<Label> = vec!["default".parse().unwrap()];
    let mut clusters = vec![
        ClusterFacts { name: &aws, labels: &labels, enabled: true, capabilities: None },
        ClusterFacts { name: &gcp, labels: &labels, enabled: true, capabilities: Some(&engine) },
    ];
    let hello = read("hello_world/infrabox.json");
    check_clusters(&hello, &clusters).expect("gcp builds images");
    clusters.pop();
    let refused = check_clusters(&hello, &clusters).unwrap_err().0[0].to_string();
    assert_eq!(
        refused,
        "jobs[0].type: job \"hello-world\": no cluster with its labels can run it: aws runs no docker jobs (unknown executor)"
    );
    clusters[0].capabilities = Some(&engine);
    let compose = check_clusters(&read("docker_compose/infrabox.json"), &clusters).unwrap_err().0[0].to_string();
    assert_eq!(
        compose,
        "jobs[0].type: job \"test\": no cluster with its labels can run it: aws runs no docker-compose jobs \
         (process executor: no compose program (jobs.containers.compose))"
    );
    let no_secrets = Capabilities { secrets: false, executor: "kubernetes".into(), ..engine.clone() };
    clusters[0].capabilities = Some(&no_secrets);
    let named = parse(
        r#"{"version": 1, "jobs": [{"type": "docker", "name": "t", "docker_file": "D", "environment": {"TOKEN": {"$secret": "token"}}}]}"#,
    )
    .unwrap();
    let secrets = check_clusters(&named, &clusters).unwrap_err().to_string();
    assert!(
        secrets.contains("no cluster with its labels can run it: aws gives jobs no secrets (kubernetes executor)"),
        "{secrets}"
    );
    // A deployment needs a cluster that logs in to registries; its password is a secret it
    // names, delivered under its own key.
    let deploy = read("deploy/infrabox.json");
    let no_logins = Capabilities { registries: false, ..engine.clone() };
    clusters[0].capabilities = Some(&no_logins);
    let refused = check_clusters(&deploy, &clusters).unwrap_err().0[0].to_string();
    assert_eq!(
        refused,
        "jobs[0].deployments: job \"test\": no cluster with its labels can run it: aws does not log in to \
         registries, push images or pull one without running it (process executor)"
    );
    // So does an image pulled and not run.
    let pulled =
        parse(r#"{"version": 1, "jobs": [{"type": "docker-image", "name": "p", "image": "i", "run": false}]}"#)
            .unwrap();
    let refused = check_clusters(&pulled, &clusters).unwrap_err().0[0].to_string();
    assert!(
        refused.starts_with("jobs[0].run: job \"p\": no cluster with its labels can run it: aws does not"),
        "{refused}"
    );
    clusters[0].capabilities = Some(&engine);
    check_clusters(&deploy, &clusters).expect("aws logs in to registries");
    let uses = deploy.jobs[0].secret_uses();
    assert_eq!(
        uses.iter().map(|u| (u.key.as_str(), u.path.as_str())).collect::<Vec<_>>(),
        [("deployments[0].password", "deployments[0].password")]
    );
    assert!(deploy.jobs[0].needs().secrets, "a registry's password is a secret the job needs");
    // The stored form keeps only what was said: a plain command job has none of it.
    let plain = parse("version: 1\njobs: [{name: a, type: command, command: 'true'}]").unwrap();
    let json = serde_json::to_value(&plain.jobs[0]).unwrap();
    for key in ["container", "secret_env", "include"] {
        assert!(json.get(key).is_none(), "{key} in {json}");
    }
    let round: PipelineSpec =
        serde_json::from_value(serde_json::to_value(read("deploy/infrabox.json")).unwrap()).unwrap();
    assert_eq!(round, read("deploy/infrabox.json"), "the stored form reads back the same");
}

#[test]
fn each_infrabox_key_is_checked_where_it_stands() {
    let cases: &[(&str, &str, &str)] = &[
        (r#"{"name":"a","type":"docker"}"#, "jobs[0].docker_file", "missing: a docker job needs a docker_file"),
        (r#"{"name":"a","type":"docker-compose"}"#, "jobs[0].docker_compose_file", "missing"),
        (r#"{"name":"a","type":"docker-image","image":"--privileged"}"#, "jobs[0].image", "cannot start with '-'"),
        (r#"{"name":"a","type":"workflow"}"#, "jobs[0].infrabox_file", "names the pipeline file it includes"),
        (r#"{"name":"a","type":"git","commit":"main"}"#, "jobs[0].clone_url", "missing"),
        (r#"{"name":"a","type":"git","clone_url":"u","commit":"--upload-pack=x"}"#, "jobs[0].commit", "not a commit"),
        (
            r#"{"name":"a","type":"git","clone_url":"https://me:t0ken@host/r.git","commit":"main"}"#,
            "jobs[0].clone_url",
            "carries no password",
        ),
        (r#"{"name":"a","type":"docker","docker_file":"/etc/Dockerfile"}"#, "jobs[0].docker_file", "is absolute"),
        (r#"{"name":"a","type":"docker","docker_file":""}"#, "jobs[0].docker_file", "cannot be empty"),
        (r#"{"name":"a","type":"docker","docker_file":"D","build_only":"yes"}"#, "jobs[0].build_only", "true or false"),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","build_arguments":{"A":""}}"#,
            "jobs[0].build_arguments.A",
            "cannot be empty",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","build_arguments":[]}"#,
            "jobs[0].build_arguments",
            "must be a map",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","cache":{"after_image":true}}"#,
            "jobs[0].cache.after_image",
            "unknown key",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","security_context":{"capabilities":{}}}"#,
            "jobs[0].security_context.capabilities",
            "unknown key",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","repository":{"github_api_token":"x"}}"#,
            "jobs[0].repository.github_api_token",
            "unknown key",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","services":[{"apiVersion":"v1","kind":"K","metadata":{"name":"s"}},{"apiVersion":"v1","kind":"K","metadata":{"name":"s"}}]}"#,
            "jobs[0].services[1].metadata.name",
            "duplicate service name \"s\"",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","services":[{"kind":"K","metadata":{}}]}"#,
            "jobs[0].services[0].apiVersion",
            "missing",
        ),
        (r#"{"name":"a","type":"docker","docker_file":"D","deployments":[]}"#, "jobs[0].deployments", "empty"),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","deployments":[{"type":"quay"}]}"#,
            "jobs[0].deployments[0].type",
            "unknown registry type \"quay\"",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","deployments":[{"type":"docker-registry","host":"h"}]}"#,
            "jobs[0].deployments[0].repository",
            "missing",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","deployments":[{"type":"docker-registry","host":"h","repository":"r","password":"plain"}]}"#,
            "jobs[0].deployments[0].password",
            "must be a secret",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","deployments":[{"type":"ecr","host":"h","repository":"r","region":"x","access_key_id":{"$secret":"A"},"secret_access_key":{"$vault":"v"}}]}"#,
            r#"jobs[0].deployments[0].secret_access_key."$vault_secret_path""#,
            "missing",
        ),
        (
            r#"{"name":"a","type":"docker-image","image":"i","registries":[{"type":"docker-registry","host":"h","repository":"r"}]}"#,
            "jobs[0].registries[0].username",
            "missing",
        ),
        (
            r#"{"name":"a","type":"docker-image","image":"i","environment":{"X":{"$secret":""}}}"#,
            r#"jobs[0].environment.X."$secret""#,
            "cannot be empty",
        ),
        (
            r#"{"name":"a","type":"docker-image","image":"i","environment":{"X":{}}}"#,
            "jobs[0].environment.X",
            "missing $secret",
        ),
        (
            r#"{"name":"a","type":"docker-image","image":"i","environment":{"X":{"$secret":"has space"}}}"#,
            r#"jobs[0].environment.X."$secret""#,
            "a secret's name",
        ),
        (
            r#"{"name":"a","type":"docker-image","image":"i","docker_file":"D"}"#,
            "jobs[0].docker_file",
            "a docker-image job takes no docker_file (only: docker)",
        ),
        (
            r#"{"name":"a","type":"docker-compose","docker_compose_file":"c.yml","command":["x"]}"#,
            "jobs[0].command",
            "a docker-compose job takes no command",
        ),
        (
            r#"{"name":"a","type":"workflow","infrabox_file":"f","environment":{}}"#,
            "jobs[0].environment",
            "a workflow job includes other jobs and runs nothing itself",
        ),
        (
            r#"{"name":"a","type":"git","clone_url":"u","commit":"c","resources":{}}"#,
            "jobs[0].resources",
            "a git job includes other jobs",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","resources":{"kubernetes":{"limits":{"cpu":"lots"}}}}"#,
            "jobs[0].resources.kubernetes.limits.cpu",
            "must be cores",
        ),
        (
            r#"{"name":"a","type":"docker","docker_file":"D","dockerfile":"x"}"#,
            "jobs[0].dockerfile",
            "did you mean \"docker_file\"?",
        ),
        (
            r#"{"name":"a","type":"docker-compose","docker_compose_file":"c.yml","compose_profiles":["p","p"]}"#,
            "jobs[0].compose_profiles[1]",
            "listed twice",
        ),
    ];
    for (job, path, words) in cases {
        let found = problems(&format!(r#"{{"version": 1, "jobs": [{job}]}}"#));
        has(&found, path, words);
    }
}

#[test]
fn keys_that_no_executor_runs_yet_are_refused_by_name() {
    let spec = parse(
        r#"{"version": 1, "jobs": [
            {"name": "img", "type": "docker-image", "image": "i", "run": false, "environment": {"T": {"$vault": "v", "$vault_secret_path": "p", "$vault_secret_key": "k"}, "S": {"$secret": "TOKEN"}},
             "security_context": {"privileged": true}, "services": [{"apiVersion": "v1", "kind": "K", "metadata": {"name": "s"}}],
             "registries": [{"type": "gcr", "host": "h", "repository": "r", "service_account": {"$secret": "SA"}}],
             "resources": {"kubernetes": {"limits": {"cpu": 1, "memory": 1024}}}, "build_context": "ctx", "cache": {"image": true}},
            {"name": "inc", "type": "workflow", "infrabox_file": "sub/infrabox.json"},
            {"name": "up", "type": "docker-compose", "docker_compose_file": "c.yml"}
        ]}"#,
    )
    .unwrap();
    let refused: Vec<String> = unsupported(&spec).iter().map(|p| p.path.clone()).collect();
    assert_eq!(
        refused,
        [
            "jobs[0].environment.T",
            "jobs[0].registries[0].type",
            "jobs[0].services",
            "jobs[0].security_context.privileged",
            "jobs[0].resources.kubernetes",
            "jobs[0].cache.image",
            "jobs[0].build_context",
            "jobs[1].type",
        ]
    );
    // check_clusters refuses them too, with clusters known, and what the cluster does not run
    // (a cluster that never said what it runs is taken to run command jobs only: that is said,
    // not also that it logs in to no registries).
    let clusters = [("aws".parse().unwrap(), vec!["aws".parse().unwrap()], true)];
    let err = check_clusters(&spec, &facts(&clusters)).unwrap_err();
    assert_eq!(err.0.len(), 10, "{err}");
}

#[test]
fn registry_logins_other_than_docker_registry_and_a_stage_of_nothing_are_refused_by_name() {
    let spec = parse(
        r#"{"version": 1, "jobs": [
            {"name": "img", "type": "docker-image", "image": "i", "run": false,
             "deployments": [{"type": "docker-registry", "host": "h", "repository": "r", "target": "t"},
                             {"type": "ecr", "host": "h", "repository": "r", "region": "x", "access_key_id": {"$secret": "A"}, "secret_access_key": {"$secret": "S"}}]},
            {"name": "up", "type": "docker-compose", "docker_compose_file": "c.yml",
             "registries": [{"type": "docker-registry", "host": "h", "repository": "r", "username": "u", "password": {"$secret": "P"}}]}
        ]}"#,
    )
    .unwrap();
    // An image's name is made of parts an engine takes, and nothing else.
    for (entry, key) in [
        (r#""host": "-h", "repository": "r""#, "host"),
        (r#""host": "h\nx", "repository": "r""#, "host"),
        (r#""host": "h", "repository": "Caps""#, "repository"),
        (r#""host": "h", "repository": "/r""#, "repository"),
        (r#""host": "h", "repository": "r", "tag": "a b""#, "tag"),
        (r#""host": "h", "repository": "r", "tag": "-t""#, "tag"),
    ] {
        let doc = format!(
            r#"{{"version": 1, "jobs": [{{"name": "b", "type": "docker", "docker_file": "D", "deployments": [{{"type": "docker-registry", {entry}}}]}}]}}"#
        );
        let err = parse(&doc).unwrap_err().to_string();
        assert!(err.contains(&format!("jobs[0].deployments[0].{key}: ")), "{entry}: {err}");
    }
    let refused: Vec<String> = unsupported(&spec).iter().map(ToString::to_string).collect();
    assert_eq!(
        refused,
        [
            "jobs[0].deployments[1].type: job \"img\": ecr logins are not made by atoll: use type docker-registry \
             with the registry's username and a token as password (a secret)",
            "jobs[0].deployments[0].target: job \"img\": names a build stage, and a docker-image job builds nothing",
            "jobs[1].registries: job \"up\": logging in to registries for a docker-compose job's services is not \
             supported yet",
        ]
    );
}
