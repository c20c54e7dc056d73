//! Expanding includes: names, inherited parents, the include's wait job on the leaves, paths,
//! cycles, and problems in included files.

use std::collections::BTreeMap;

use super::include::*;
use super::*;
use crate::ids::JobId;

/// Files by tree: `Root` paths as given, git ones as `url@commit:path`.
struct Map(BTreeMap<String, String>);

impl Loader for Map {
    fn read(&mut self, tree: &Tree, path: &str) -> Result<Option<String>, String> {
        let key = match tree {
            Tree::Root => path.to_string(),
            Tree::Git { clone_url, commit } => format!("{clone_url}@{commit}:{path}"),
        };
        Ok(self.0.get(&key).cloned())
    }
}

fn files(pairs: &[(&str, &str)]) -> Map {
    Map(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn expand_root(loader: &mut Map) -> Result<PipelineSpec, SpecErrors> {
    let text = loader.0["infrabox.json"].clone();
    expand(parse(&text).unwrap(), "infrabox.json", loader)
}

fn deps(spec: &PipelineSpec, name: &str) -> Vec<String> {
    let job = spec.jobs.iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no job {name}"));
    job.depends_on.iter().map(|d| d.job.clone()).collect()
}

const CMD: &str = r#""type": "command", "command": "true""#;

#[test]
fn infrabox_s_nested_workflow_expands_to_the_names_and_parents_infrabox_gives() {
    // InfraBox's own end-to-end case: flow includes sub-2, which depends on sub-1.
    let mut loader = files(&[
        (
            "infrabox.json",
            r#"{"version": 1, "jobs": [{"type": "workflow", "name": "flow", "infrabox_file": "flow/infrabox.json"}]}"#,
        ),
        (
            "flow/infrabox.json",
            &format!(
                r#"{{"version": 1, "jobs": [
                    {{"name": "sub-1", {CMD}}},
                    {{"type": "workflow", "name": "sub-2", "infrabox_file": "nested/infrabox.json", "depends_on": ["sub-1"]}},
                    {{"name": "sub-3", {CMD}, "depends_on": ["sub-1"]}}]}}"#
            ),
        ),
        (
            "flow/nested/infrabox.json",
            &format!(
                r#"{{"version": 1, "jobs": [
                    {{"name": "nested-1", {CMD}}},
                    {{"name": "nested-2", {CMD}, "depends_on": ["nested-1"]}},
                    {{"name": "nested-3", {CMD}, "depends_on": ["nested-1"]}}]}}"#
            ),
        ),
    ]);
    let spec = expand_root(&mut loader).unwrap();
    let names: Vec<&str> = spec.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "flow/sub-1",
            "flow/sub-2/nested-1",
            "flow/sub-2/nested-2",
            "flow/sub-2/nested-3",
            "flow/sub-2",
            "flow/sub-3",
            "flow"
        ]
    );
    assert_eq!(deps(&spec, "flow"), ["flow/sub-2", "flow/sub-3"], "the include waits for its leaves");
    assert_eq!(deps(&spec, "flow/sub-2"), ["flow/sub-2/nested-2", "flow/sub-2/nested-3"]);
    assert_eq!(deps(&spec, "flow/sub-2/nested-1"), ["flow/sub-1"], "inherits its include's parents");
    assert_eq!(deps(&spec, "flow/sub-2/nested-2"), ["flow/sub-2/nested-1"]);
    assert!(deps(&spec, "flow/sub-1").is_empty());
    let wait = spec.jobs.iter().find(|j| j.name == "flow").unwrap();
    assert_eq!(wait.kind, JobKind::Wait);
    assert_eq!(
        spec.jobs.iter().find(|j| j.name == "flow/sub-2/nested-1").unwrap().defined_in,
        Some(DefinedIn { dir: "flow/nested".into(), at: "flow/nested/infrabox.json: jobs[0]".into(), git: None })
    );
    let i = spec.jobs.iter().position(|j| j.name == "flow/sub-2/nested-1").unwrap();
    assert_eq!(spec.job_path(i), "flow/nested/infrabox.json: jobs[0]", "problems name the file");
    assert_eq!(spec.job_path(spec.jobs.len() - 1), "jobs[0]", "the include's own wait job, at its place in the file");
    assert_eq!(topological_order(&spec).len(), spec.jobs.len());
    assert_eq!(JobId::new("p1", "flow/sub-2/nested-1").as_str(), "p1.flow.sub-2.nested-1", "an id is one path segment");
}

#[test]
fn a_job_that_depends_on_an_include_waits_for_all_of_it_and_a_git_include_overrides_variables() {
    let mut loader = files(&[
        (
            "infrabox.json",
            &format!(
                r#"{{"version": 1, "jobs": [
                    {{"name": "first", {CMD}}},
                    {{"type": "git", "name": "ext", "clone_url": "git://127.0.0.1/ext", "commit": "main",
                      "depends_on": ["first"], "environment": {{"MODE": "outer", "TOKEN": {{"$secret": "T"}}}}}},
                    {{"name": "after", {CMD}, "depends_on": ["ext"]}}]}}"#
            ),
        ),
        (
            "git://127.0.0.1/ext@main:infrabox.yaml",
            "version: 1\njobs:\n  - {name: a, type: command, command: 'true', environment: {MODE: inner, KEEP: x, TOKEN: plain}}\n  - {name: b, type: workflow, infrabox_file: sub/infrabox.json, depends_on: [a]}\n",
        ),
        (
            "git://127.0.0.1/ext@main:sub/infrabox.json",
            &format!(r#"{{"version": 1, "jobs": [{{"name": "c", {CMD}}}]}}"#),
        ),
    ]);
    let spec = expand_root(&mut loader).unwrap();
    assert_eq!(deps(&spec, "after"), ["ext"]);
    assert_eq!(deps(&spec, "ext"), ["ext/b"]);
    assert_eq!(deps(&spec, "ext/a"), ["first"], "the git include's parents");
    assert_eq!(deps(&spec, "ext/b/c"), ["ext/a"], "the nested workflow's parents");
    let a = spec.jobs.iter().find(|j| j.name == "ext/a").unwrap();
    assert_eq!(a.environment.get("MODE").map(String::as_str), Some("outer"));
    assert_eq!(a.environment.get("KEEP").map(String::as_str), Some("x"));
    assert!(!a.environment.contains_key("TOKEN"));
    assert_eq!(a.secret_env.get("TOKEN"), Some(&SecretRef::Secret("T".into())));
    let c = spec.jobs.iter().find(|j| j.name == "ext/b/c").unwrap();
    assert_eq!(
        c.defined_in,
        Some(DefinedIn {
            dir: "sub".into(),
            at: "git://127.0.0.1/ext@main:sub/infrabox.json: jobs[0]".into(),
            git: Some(GitAt { clone_url: "git://127.0.0.1/ext".into(), commit: "main".into() })
        }),
        "a workflow inside a git include is read from that repository"
    );
}

#[test]
fn include_cycles_escapes_missing_files_and_bad_included_files_are_reported_with_their_files() {
    let include =
        |name: &str, file: &str| format!(r#"{{"type": "workflow", "name": "{name}", "infrabox_file": "{file}"}}"#);
    let mut loader = files(&[
        ("infrabox.json", &format!(r#"{{"version": 1, "jobs": [{}]}}"#, include("a", "a/infrabox.json"))),
        ("a/infrabox.json", &format!(r#"{{"version": 1, "jobs": [{}]}}"#, include("b", "../b/infrabox.json"))),
        ("b/infrabox.json", &format!(r#"{{"version": 1, "jobs": [{}]}}"#, include("back", "../infrabox.json"))),
    ]);
    let err = expand_root(&mut loader).unwrap_err();
    assert_eq!(
        err.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "b/infrabox.json: jobs[0].infrabox_file: include cycle: infrabox.json -> a/infrabox.json -> b/infrabox.json -> infrabox.json"
        ]
    );

    let mut loader = files(&[(
        "infrabox.json",
        &format!(
            r#"{{"version": 1, "jobs": [{}, {}, {}]}}"#,
            include("out", "../../etc/infrabox.json"),
            include("gone", "missing.json"),
            include("bad", "bad/infrabox.json")
        ),
    )]);
    loader.0.insert("bad/infrabox.json".into(), r#"{"version": 1, "jobs": [{"name": "x", "type": "docker"}]}"#.into());
    let found: Vec<String> = expand_root(&mut loader).unwrap_err().0.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            r#"jobs[0].infrabox_file: "../../etc/infrabox.json" leads outside the pipeline's files"#,
            "jobs[1].infrabox_file: no pipeline file: missing.json does not exist",
            "bad/infrabox.json: jobs[0].docker_file: missing: a docker job needs a docker_file to build",
        ]
    );

    // The same file twice, from different places, is not a cycle.
    let mut loader = files(&[
        (
            "infrabox.json",
            &format!(r#"{{"version": 1, "jobs": [{}, {}]}}"#, include("one", "lib.json"), include("two", "lib.json")),
        ),
        ("lib.json", &format!(r#"{{"version": 1, "jobs": [{{"name": "t", {CMD}}}]}}"#)),
    ]);
    let spec = expand_root(&mut loader).unwrap();
    assert_eq!(spec.jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["one/t", "one", "two/t", "two"]);

    // A git include with no pipeline file says where it looked.
    let mut loader = files(&[(
        "infrabox.json",
        r#"{"version": 1, "jobs": [{"type": "git", "name": "g", "clone_url": "u", "commit": "c"}]}"#,
    )]);
    let found = expand_root(&mut loader).unwrap_err().0[0].to_string();
    assert_eq!(found, "jobs[0].clone_url: no pipeline file: neither u@c:infrabox.json nor u@c:infrabox.yaml exists");
}

#[test]
fn paths_stay_inside_the_tree() {
    assert_eq!(join_inside("flow", "nested/infrabox.json").unwrap(), "flow/nested/infrabox.json");
    assert_eq!(join_inside("flow/a", "../b/./x.json").unwrap(), "flow/b/x.json");
    assert!(join_inside("flow", "../../x.json").unwrap_err().contains("leads outside"));
    assert!(join_inside("", "..").is_err());
    assert!(join_inside("", "a/..").unwrap_err().contains("names a directory"));
}

#[test]
fn a_server_clones_only_network_repositories() {
    let server = GitTrees::new(std::time::Duration::from_secs(1));
    for ok in ["https://example.com/r.git", "git://127.0.0.1:9418/r", "ssh://git@host/r", "git@host:org/r.git"] {
        assert!(server.allows(ok).is_ok(), "{ok}");
    }
    for refused in ["/srv/repos/r", "file:///etc", "ext::sh -c touch% /tmp/x", "../r", "fd::3"] {
        let why = server.allows(refused).unwrap_err();
        assert!(why.contains("is not a network repository"), "{refused}: {why}");
    }
    assert!(GitTrees::with_local(std::time::Duration::from_secs(1)).allows("/srv/repos/r").is_ok());
}

#[test]
fn includes_that_would_make_too_many_jobs_stop_early_and_each_file_is_read_once() {
    // 200 includes of one file of 100 jobs: 20,000 jobs, over the limit, found after ~100 includes.
    let jobs: Vec<String> = (0..100).map(|i| format!(r#"{{"name": "j{i}", {CMD}}}"#)).collect();
    let includes: Vec<String> =
        (0..200).map(|i| format!(r#"{{"type": "workflow", "name": "w{i}", "infrabox_file": "big.json"}}"#)).collect();
    struct Counting(Map, usize);
    impl Loader for Counting {
        fn read(&mut self, tree: &Tree, path: &str) -> Result<Option<String>, String> {
            self.1 += 1;
            self.0.read(tree, path)
        }
    }
    let mut loader = Counting(
        files(&[
            ("infrabox.json", &format!(r#"{{"version": 1, "jobs": [{}]}}"#, includes.join(","))),
            ("big.json", &format!(r#"{{"version": 1, "jobs": [{}]}}"#, jobs.join(","))),
        ]),
        0,
    );
    let root = parse(&loader.0.0["infrabox.json"]).unwrap();
    let err = expand(root, "infrabox.json", &mut loader).unwrap_err();
    assert!(err.0.iter().any(|p| p.message.contains("more than 10000 jobs")), "{err}");
    assert_eq!(loader.1, 1, "big.json read once");
}

#[test]
fn a_link_out_of_the_tree_and_a_dangling_one_read_alike_and_show_no_target() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("real.json"), "{}").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("out.json")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", dir.path().join("dangling.json")).unwrap();
    std::os::unix::fs::symlink("real.json", dir.path().join("inside.json")).unwrap();
    let mut loader = Files::new(RootFiles::Dir(dir.path().to_path_buf()), None);
    assert_eq!(loader.read(&Tree::Root, "inside.json").unwrap().as_deref(), Some("{}"));
    assert_eq!(loader.read(&Tree::Root, "missing.json").unwrap(), None);
    let out = loader.read(&Tree::Root, "out.json").unwrap_err();
    let dangling = loader.read(&Tree::Root, "dangling.json").unwrap_err();
    assert_eq!(out.replace("out.json", "X"), dangling.replace("dangling.json", "X"), "told apart: {out} / {dangling}");
    assert!(!out.contains("/etc"), "{out}");
    let mut given = Files::new(RootFiles::Given(Default::default()), None);
    assert!(
        given.read(&Tree::Root, "flow/infrabox.json").unwrap_err().contains("carried no files and names no source")
    );
}

#[test]
fn what_an_included_job_asks_for_and_no_executor_runs_is_refused_at_its_file() {
    let mut loader = files(&[
        (
            "infrabox.json",
            r#"{"version": 1, "jobs": [{"type": "workflow", "name": "flow", "infrabox_file": "flow/infrabox.json"}]}"#,
        ),
        (
            "flow/infrabox.json",
            r#"{"version": 1, "jobs": [{"type": "docker", "name": "build", "docker_file": "Dockerfile"}]}"#,
        ),
    ]);
    let spec = expand_root(&mut loader).unwrap();
    let aws: crate::ids::ClusterName = "aws".parse().unwrap();
    let clusters = [ClusterFacts { name: &aws, labels: &[], enabled: true, capabilities: None }];
    let refused: Vec<String> =
        check_clusters(&spec, &clusters).unwrap_err().0.iter().map(ToString::to_string).collect();
    assert_eq!(
        refused,
        ["flow/infrabox.json: jobs[0].type: job \"flow/build\": no cluster with its labels can run it: aws runs no \
          docker jobs (unknown executor)"]
    );
}
