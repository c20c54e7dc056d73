//! Secrets end to end: `atoll secret set` (from standard input and from a file), `list` and
//! `delete`, admin scope only; a job naming one gets its value in its environment and nowhere
//! else: not in the CLI's or the API's answers, the job's details, the gateway's or the agents'
//! logs, or the gateway's database file (sealed there). A pipeline naming a secret that does not
//! exist is refused at submit, with its path; a cluster's replica gets an attempt's secrets only
//! for an attempt bound to it.

mod common;

use std::io::Write;
use std::path::Path;

use atoll_api::gateway::Scope;
use atoll_api::gateway::UserTokenRequest;
use atoll_api::jobs::JobState;
use common::Engine;
use common::GatewayMesh;
use common::id_of;
use common::phase;
use common::test_gateway_timing;
use common::wait_final;

const VALUE: &str = "s3cr3t-Value-4f9c2e";

/// Every file under `dir` (bounded: at most 10,000) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            assert!(seen < 10_000, "too many files under {}", dir.display());
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_the_environment_of_the_job_that_names_it() {
    let m = GatewayMesh::start(Engine::Sqlite, 3, 1, test_gateway_timing(), false).await;

    phase("atoll secret set, from standard input and from a file; list shows names only");
    let mut set = std::process::Command::new(env!("CARGO_BIN_EXE_atoll"))
        .arg("--config")
        .arg(m.t.mesh.dir.cli_config())
        .args(["secret", "set", "TOKEN"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(set.stdin.take().unwrap(), "{VALUE}").unwrap();
    let out = set.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let file = m.t.dir.path().join("other.txt");
    std::fs::write(&file, "second value").unwrap();
    let out = m.cli(&["secret", "set", "OTHER", "--from-file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = m.cli(&["secret", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect::<Vec<_>>(),
        ["OTHER", "TOKEN"]
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(VALUE));
    let empty = m.t.dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = m.cli(&["secret", "set", "EMPTY", "--from-file", empty.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("value: empty: a secret needs a value"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = m.cli(&["secret", "set", "bad name", "--from-file", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a secret's name has only letters"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    phase("only the admin scope manages secrets");
    let submitter = m
        .gateway
        .user_token(&UserTokenRequest { name: "ci".into(), scopes: vec![Scope::Submit], ttl_s: None })
        .await
        .unwrap()
        .token;
    let as_submitter = m.anonymous(Some(submitter));
    let refused = as_submitter.set_secret("TOKEN", "overwritten").await.unwrap_err().to_string();
    assert!(refused.contains("lacks the admin scope"), "{refused}");
    assert!(as_submitter.secrets().await.is_err());

    phase("a job naming the secret gets its value in its environment");
    // The spec compares the value reversed: the value itself must appear nowhere but in the
    // job's environment (the spec is stored, replicated and logged).
    let reversed: String = VALUE.chars().rev().collect();
    let spec = format!(
        "version: 1
jobs:
  - name: use
    type: command
    command: test \"$(printf %s \"$TOKEN\" | rev)\" = \"{reversed}\" && test \"$PLAIN\" = visible && echo \"token of ${{#TOKEN}} characters\"
    environment: {{TOKEN: {{$secret: TOKEN}}, PLAIN: visible}}
    timeout: 60
"
    );
    let submitted = common::submit(&m.gateway, &spec).await;
    let id = id_of(&submitted, "use");
    let detail = wait_final(&m.gateway, &id).await;
    assert_eq!(detail.job.state, JobState::Finished, "{detail:?}");
    let logs = m.cli(&["logs", &id]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("token of 19 characters"));

    phase("the value is nowhere else: answers, details, logs, the database file");
    for args in [vec!["job", id.as_str(), "--json"], vec!["jobs", "--json"], vec!["logs", id.as_str()]] {
        let out = m.cli(&args);
        assert!(!String::from_utf8_lossy(&out.stdout).contains(VALUE), "{args:?}");
    }
    let found = files_containing(m.t.dir.path(), VALUE.as_bytes());
    assert!(found.is_empty(), "the value is in {found:?}");

    phase("a secret that does not exist is refused at submit, with its path");
    let refused = atoll_api::spec::parse_document(
        "version: 1\njobs: [{name: a, type: command, command: 'true', environment: {X: {$secret: NOPE}}}]\n",
    )
    .unwrap();
    let error = m
        .gateway
        .submit(&atoll_api::jobs::SubmitRequest { spec: refused, files: Default::default() })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("jobs[0].environment.X: job \"a\": secret \"NOPE\" does not exist (atoll secret set NOPE)"),
        "{error}"
    );

    phase("a cluster's secrets only for an attempt bound to it; a user gets none");
    let answer = as_submitter.job_secrets("aws", &id, 1).await.unwrap_err().to_string();
    assert!(answer.contains("user ci may not act for cluster aws") && !answer.contains(VALUE), "{answer}");

    phase("atoll secret delete");
    let out = m.cli(&["secret", "delete", "OTHER"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = m.cli(&["secret", "delete", "OTHER"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no secret named \"OTHER\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
