//! The configs inside the Kubernetes manifests are checked by the binary itself: every overlay and
//! example under `deploy/` is rendered with `kubectl kustomize`, and for every workload that runs
//! `atoll agent|gateway --config FILE`, `atoll ... --check-config` runs the way its first pod would
//! run it: the ConfigMap's file at its mount path, the container's environment (downward API
//! filled in, `$(VAR)` expanded), its host name (a StatefulSet's ordinal gives the node id), and
//! its Secrets at their mount paths. The Secrets themselves are not in the manifests (an operator
//! creates them), so the files the config reads from them hold stand-ins of the right form.
//! Needs root (mount and UTS namespaces) and kubectl; without either the test fails, saying so.

mod common;

use std::collections::BTreeMap;

use common::phase;
use common::pods;
use common::pods::str_at;
use serde_yaml_ng::Value;

/// Every `*_file` value of a config: the secrets it reads from files.
fn secret_files(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                match (key.as_str(), child.as_str()) {
                    (Some(key), Some(path)) if key.ends_with("_file") => out.push((key.to_string(), path.to_string())),
                    _ => secret_files(child, out),
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| secret_files(v, out)),
        _ => {}
    }
}

/// A stand-in of the right form for the secret a `*_file` key names.
fn stand_in(key: &str) -> String {
    match key {
        "url_file" => "postgres://atoll:stand-in@postgres:5432/atoll".to_string(),
        "join_token_file" => "atoll-join.stand-in.stand-in".to_string(),
        _ => "stand-in-secret".to_string(),
    }
}

#[test]
fn the_configs_in_the_manifests_pass_the_binarys_own_check() {
    assert!(nix::unistd::geteuid().is_root(), "checking the manifests' configs needs root (mount and UTS namespaces)");
    let _exclusive = pods::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = BTreeMap::new();
    for kustomization in pods::kustomizations() {
        let name = kustomization.strip_prefix(pods::deploy_dir("")).unwrap().display().to_string();
        let workloads = pods::workloads(&pods::render(&kustomization));
        phase(&format!("{name}: {} workload(s) run atoll", workloads.len()));
        for workload in workloads {
            let config = workload.config();
            let daemon = workload.args.first().cloned().expect("atoll's subcommand");
            assert!(daemon == "agent" || daemon == "gateway", "{name}: {} runs atoll {daemon}", workload.name);
            let mut files = Vec::new();
            secret_files(&config, &mut files);
            let secrets: BTreeMap<String, String> =
                files.iter().map(|(key, path)| (path.clone(), stand_in(key))).collect();
            let pod = workload.pod(0, "10.0.0.10");
            let root = dir.path().join(name.replace('/', "-")).join(&workload.name);
            workload.make_volumes(&root, &pod, &secrets);
            let created = workload.make_mount_points();
            let args = vec![
                daemon.clone(),
                "--check-config".to_string(),
                "--config".to_string(),
                workload.config_path.clone(),
            ];
            let script = workload.pod_script(&root, &pod, None, &[], Some(&args));
            let output = pods::unshare(&script).output().expect("unshare (util-linux)");
            pods::remove_mount_points(&created);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "{name}: {} {} (pod {}): atoll {daemon} --check-config refused its config:\n{stderr}",
                workload.kind,
                workload.name,
                pod.name
            );
            eprintln!("{name}: {} {}: {}", workload.kind, workload.name, stderr.trim());
            let effective: Value = serde_yaml_ng::from_str(&stdout).expect("the effective config is YAML");
            if daemon == "agent" {
                assert_eq!(
                    effective["node"]["id"],
                    Value::from(1),
                    "{name}: pod {} of {} is node 1",
                    pod.name,
                    workload.name
                );
                assert!(str_at(&effective, &["cluster", "name"]).is_some());
            }
            *checked.entry(daemon).or_insert(0) += 1;
        }
    }
    eprintln!("configs checked: {checked:?}");
    assert!(checked.get("agent").copied().unwrap_or(0) >= 1, "no agent config among the manifests");
    assert!(checked.get("gateway").copied().unwrap_or(0) >= 1, "no gateway config among the manifests");
}
