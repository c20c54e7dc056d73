//! Pods of the Kubernetes manifests in `deploy/`, run without Kubernetes: the workloads of a
//! rendered overlay (`kubectl kustomize`), and a shell script that starts one of their pods'
//! `atoll` processes the way the kubelet would, in mount and UTS namespaces of its own (root only):
//! its host name, its volumes bind-mounted at their mount paths, its environment with the
//! downward API filled in and `$(VAR)` expanded, its user.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// `deploy/<relative>` in this repository.
pub fn deploy_dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(relative)
}

/// Every directory under `deploy/` holding a `kustomization.yaml` that is meant to be applied:
/// the overlays and examples (not the bases and components they build on).
pub fn kustomizations() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for top in ["overlays", "examples"] {
        let mut stack = vec![deploy_dir(top)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            if dir.join("kustomization.yaml").exists() {
                found.push(dir.clone());
            }
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }
    found.sort();
    assert!(!found.is_empty(), "no kustomization under deploy/overlays or deploy/examples");
    found
}

/// `kubectl kustomize DIR`, as objects.
pub fn render(dir: &Path) -> Vec<Value> {
    let output = Command::new("kubectl").arg("kustomize").arg(dir).output().unwrap_or_else(|e| {
        panic!("rendering the manifests needs kubectl (scripts/test installs it): running `kubectl kustomize`: {e}")
    });
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8 manifests");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("a rendered object"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// A Deployment's or StatefulSet's pods, as far as running their `atoll` goes.
#[derive(Clone, Debug)]
pub struct Workload {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    /// A StatefulSet's headless Service.
    pub service: Option<String>,
    pub replicas: usize,
    pub grace: Duration,
    /// `atoll`'s arguments (`agent --config /etc/atoll/agent.yaml`).
    pub args: Vec<String>,
    pub env: Vec<Value>,
    /// (volume, mount path) of the container.
    pub mounts: Vec<(String, String)>,
    /// Volume name -> its `volumes` entry (`claim` for a volumeClaimTemplate).
    pub volumes: BTreeMap<String, Value>,
    /// Every ConfigMap of the rendering: name -> file -> text.
    pub configmaps: BTreeMap<String, BTreeMap<String, String>>,
    /// The path `--config` names, and the file's text from the ConfigMap mounted there.
    pub config_path: String,
    pub config_text: String,
    /// `runAsUser` / `runAsGroup` of the container (or the pod).
    pub user: Option<(u64, u64)>,
}

/// The workloads of a rendering whose container runs `atoll ... --config FILE`.
pub fn workloads(docs: &[Value]) -> Vec<Workload> {
    let mut configmaps = BTreeMap::new();
    for doc in docs.iter().filter(|d| str_at(d, &["kind"]) == Some("ConfigMap")) {
        let name = str_at(doc, &["metadata", "name"]).expect("configmap name").to_string();
        let data: BTreeMap<String, String> = at(doc, &["data"])
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter().map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string())).collect()
            })
            .unwrap_or_default();
        configmaps.insert(name, data);
    }
    let mut found = Vec::new();
    for doc in docs {
        let kind = str_at(doc, &["kind"]).unwrap_or_default();
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        let spec = at(doc, &["spec", "template", "spec"]).expect("pod spec");
        let Some(container) = at(spec, &["containers"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .find(|c| words(c, "command").chain(words(c, "args")).any(|a| a == "--config"))
        else {
            continue;
        };
        let mut args: Vec<String> = words(container, "command").collect();
        if args.first().is_some_and(|a| a.ends_with("atoll")) {
            args.remove(0);
        }
        args.extend(words(container, "args"));
        let mut volumes: BTreeMap<String, Value> = at(spec, &["volumes"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|v| (str_at(v, &["name"]).unwrap().to_string(), v.clone()))
            .collect();
        for claim in at(doc, &["spec", "volumeClaimTemplates"]).and_then(Value::as_sequence).into_iter().flatten() {
            volumes.insert(str_at(claim, &["metadata", "name"]).unwrap().to_string(), Value::from("claim"));
        }
        let mounts: Vec<(String, String)> = at(container, &["volumeMounts"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|m| {
                assert!(m.get("subPath").is_none(), "whole volumes only; a subPath mount needs this harness taught");
                (str_at(m, &["name"]).unwrap().to_string(), str_at(m, &["mountPath"]).unwrap().to_string())
            })
            .collect();
        let config_path = args.windows(2).find(|w| w[0] == "--config").map(|w| w[1].clone()).unwrap();
        let (config_dir, config_file) = config_path.rsplit_once('/').expect("an absolute --config path");
        let (volume, _) = mounts
            .iter()
            .find(|(_, path)| path.trim_end_matches('/') == config_dir)
            .unwrap_or_else(|| panic!("no volume is mounted at {config_dir}, the directory of --config"));
        let configmap = str_at(&volumes[volume], &["configMap", "name"]).expect("the config comes from a ConfigMap");
        let config_text = configmaps
            .get(configmap)
            .and_then(|files: &BTreeMap<String, String>| files.get(config_file))
            .unwrap_or_else(|| panic!("ConfigMap {configmap} has no {config_file}"))
            .clone();
        let security = |key: &str| {
            at(container, &["securityContext", key])
                .or_else(|| at(spec, &["securityContext", key]))
                .and_then(Value::as_u64)
        };
        found.push(Workload {
            kind: kind.to_string(),
            name: str_at(doc, &["metadata", "name"]).unwrap().to_string(),
            namespace: str_at(doc, &["metadata", "namespace"]).unwrap_or("default").to_string(),
            service: str_at(doc, &["spec", "serviceName"]).map(str::to_string),
            replicas: at(doc, &["spec", "replicas"]).and_then(Value::as_u64).unwrap_or(1) as usize,
            grace: Duration::from_secs(
                at(spec, &["terminationGracePeriodSeconds"]).and_then(Value::as_u64).unwrap_or(30),
            ),
            args,
            env: at(container, &["env"]).and_then(Value::as_sequence).cloned().unwrap_or_default(),
            mounts,
            volumes,
            configmaps: configmaps.clone(),
            config_path,
            config_text,
            user: security("runAsUser").map(|uid| (uid, security("runAsGroup").unwrap_or(uid))),
        });
    }
    found
}

fn words<'a>(container: &'a Value, key: &str) -> impl Iterator<Item = String> + 'a {
    at(container, &[key]).and_then(Value::as_sequence).into_iter().flatten().map(|a| a.as_str().unwrap().to_string())
}

/// `$(VAR)` references to earlier variables expanded, as the kubelet does (`$$` is a `$`).
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(stripped) = tail.strip_prefix("$$") {
            out.push('$');
            rest = stripped;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &tail[end + 3..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// One pod of a workload: its name, ordinal (0 for a Deployment's) and address.
#[derive(Clone, Debug)]
pub struct PodIdentity {
    pub name: String,
    pub ordinal: usize,
    pub ip: String,
}

impl Workload {
    /// Pod `ordinal`'s identity: `NAME-ORDINAL` for a StatefulSet, `NAME-5d8f7c9b4-x2kqp`-like
    /// for a Deployment.
    pub fn pod(&self, ordinal: usize, ip: &str) -> PodIdentity {
        let name = match self.kind.as_str() {
            "StatefulSet" => format!("{}-{ordinal}", self.name),
            _ => format!("{}-5d8f7c9b4-x2kq{ordinal}", self.name),
        };
        PodIdentity { name, ordinal, ip: ip.to_string() }
    }

    /// The parsed config file.
    pub fn config(&self) -> Value {
        serde_yaml_ng::from_str(&self.config_text).expect("the ConfigMap's config is YAML")
    }

    /// The container's environment in `pod`, as the kubelet makes it.
    pub fn env_of(&self, pod: &PodIdentity) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for entry in &self.env {
            let name = str_at(entry, &["name"]).unwrap().to_string();
            let value = if let Some(value) = str_at(entry, &["value"]) {
                expand(value, &env)
            } else if let Some(field) = str_at(entry, &["valueFrom", "fieldRef", "fieldPath"]) {
                match field {
                    "metadata.name" => pod.name.clone(),
                    "metadata.namespace" => self.namespace.clone(),
                    "status.podIP" => pod.ip.clone(),
                    "spec.nodeName" => "node-1".to_string(),
                    "metadata.labels['apps.kubernetes.io/pod-index']" => pod.ordinal.to_string(),
                    other => panic!("env {name}: this harness does not know the field {other}; teach it"),
                }
            } else {
                panic!("env {name}: this harness knows `value` and `fieldRef` entries; teach it this one: {entry:?}");
            };
            env.push((name, value));
        }
        env
    }

    /// The directory standing in for `volume` in `pod`, under `root`.
    pub fn volume_dir(&self, root: &Path, pod: &PodIdentity, volume: &str) -> PathBuf {
        root.join("pods").join(&pod.name).join(volume)
    }

    /// Make `pod`'s volumes under `root`: the ConfigMaps' files, Secrets holding `secrets` (files
    /// by their path in the pod, when under the Secret's mount path), empty claims and emptyDirs,
    /// each writable by the pod's user.
    pub fn make_volumes(&self, root: &Path, pod: &PodIdentity, secrets: &BTreeMap<String, String>) {
        for (volume, mount_path) in &self.mounts {
            let dir = self.volume_dir(root, pod, volume);
            std::fs::create_dir_all(&dir).unwrap();
            let source = &self.volumes[volume];
            if let Some(name) = str_at(source, &["configMap", "name"]) {
                for (file, text) in &self.configmaps[name] {
                    std::fs::write(dir.join(file), text).unwrap();
                }
            } else if source.get("secret").is_some() || source.get("projected").is_some() {
                let prefix = format!("{}/", mount_path.trim_end_matches('/'));
                for (path, text) in secrets {
                    if let Some(file) = path.strip_prefix(&prefix) {
                        std::fs::write(dir.join(file), text).unwrap();
                    }
                }
            }
            let status = Command::new("chmod").arg("-R").arg("a+rwX").arg(&dir).status().unwrap();
            assert!(status.success());
        }
    }

    /// The mount points this workload's pods need on this machine that are missing: made, and
    /// returned (deepest last) for [`remove_mount_points`].
    pub fn make_mount_points(&self) -> Vec<PathBuf> {
        let mut created = Vec::new();
        for (_, mount_path) in &self.mounts {
            let mut missing: Vec<PathBuf> =
                Path::new(mount_path).ancestors().filter(|p| !p.exists()).map(Path::to_path_buf).collect();
            missing.reverse();
            for path in missing {
                std::fs::create_dir(&path).unwrap_or_else(|e| panic!("making the mount point {}: {e}", path.display()));
                created.push(path);
            }
        }
        created
    }

    /// A `sh` script, for `unshare --mount --uts --propagation private sh -c SCRIPT`, that
    /// becomes `pod`'s `atoll` process: host name, `/etc/hosts` (when given), volumes, user,
    /// environment (`extra` after the container's), then `exec atoll ARGS` (`args` instead of
    /// the container's when given).
    pub fn pod_script(
        &self,
        root: &Path,
        pod: &PodIdentity,
        hosts: Option<&Path>,
        extra: &[(String, String)],
        args: Option<&[String]>,
    ) -> String {
        let mut script = String::from("set -e\n");
        script.push_str(&format!("hostname {}\n", pod.name));
        if let Some(hosts) = hosts {
            script.push_str(&format!("mount --bind {} /etc/hosts\n", hosts.display()));
        }
        // A mount over a directory holding `root` (the pod's /tmp over this machine's, say) hides
        // the sources of the mounts after it: those go last.
        let mut mounts: Vec<&(String, String)> = self.mounts.iter().collect();
        mounts.sort_by_key(|(_, path)| root.starts_with(path));
        for (volume, path) in mounts {
            script.push_str(&format!("mount --bind {} {path}\n", self.volume_dir(root, pod, volume).display()));
        }
        script.push_str("exec");
        if let Some((uid, gid)) = self.user {
            script.push_str(&format!(" setpriv --reuid {uid} --regid {gid} --clear-groups"));
        }
        script.push_str(" env -i PATH=/usr/local/bin:/usr/bin:/bin");
        for (k, v) in self.env_of(pod).iter().chain(extra) {
            script.push_str(&format!(" '{k}={v}'"));
        }
        script.push_str(&format!(" {}", super::atoll_exe().display()));
        for arg in args.unwrap_or(&self.args) {
            script.push_str(&format!(" '{arg}'"));
        }
        script.push('\n');
        script
    }
}

/// Remove the mount points [`Workload::make_mount_points`] made (deepest first).
pub fn remove_mount_points(created: &[PathBuf]) {
    for path in created.iter().rev() {
        let _ = std::fs::remove_dir(path);
    }
}

/// `unshare --mount --uts --propagation private sh -c SCRIPT`: a command for a pod's process.
pub fn unshare(script: &str) -> Command {
    let mut command = Command::new("unshare");
    command.args(["--mount", "--uts", "--propagation", "private", "sh", "-c", script]);
    command
}

/// The port of a `host:port` value.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("{addr} has no port"))
}

/// Held while a test makes mount points on this machine and runs pods on them: the tests that
/// do are one at a time, so that none removes a mount point another's pods stand on.
pub fn exclusive() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("atoll-deploy-pods.lock"))
        .expect("the pods' lock file");
    file.lock().expect("taking the pods' lock");
    file
}
