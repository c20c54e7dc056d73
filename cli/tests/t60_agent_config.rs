//! `atoll agent` refuses bad configuration, wrong certificates and another replica's data with
//! a clear error, before it binds anything.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Output;
use std::time::Duration;

use atoll_api::Identity;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;
use atoll_mesh::EXIT_WITH_PARENT_ENV;
use atoll_mesh::allocate_ports;
use common::atoll_exe;
use common::phase;

struct Setup {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA", Duration::from_secs(86_400)).unwrap();
        ca.save(dir.path()).unwrap();
        Self { dir, ca }
    }

    fn cert(&self, cluster: &str, id: u64) -> String {
        let name = format!("{cluster}-{id}");
        if !self.dir.path().join(format!("{name}.pem")).exists() {
            self.ca
                .issue(
                    &Identity::node(cluster.parse().unwrap(), id),
                    Duration::from_secs(86_400),
                    KeyAlgorithm::EcdsaP256,
                )
                .unwrap()
                .save(self.dir.path(), &name)
                .unwrap();
        }
        name
    }

    /// A single-replica config (node `id` is its own only peer) using certificate `cert`.
    fn config(&self, file: &str, id: u64, cert: &str, data: &str, extra: &str) -> PathBuf {
        let port = allocate_ports(1, 0).unwrap()[0];
        let text = format!(
            "cluster: {{name: aws, labels: [aws]}}\nnode: {{id: {id}, data_dir: {data}}}\nlisten: \"127.0.0.1:{port}\"\npeers: [{{id: {id}, addr: \"127.0.0.1:{port}\"}}]\ntls: {{ca: ca.pem, cert: {cert}.pem, key: {cert}-key.pem}}\n{extra}"
        );
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn agent(config: &Path) -> Output {
    Command::new(atoll_exe()).args(["agent", "--config"]).arg(config).env(EXIT_WITH_PARENT_ENV, "1").output().unwrap()
}

fn assert_refused(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected a refusal mentioning {needle:?}; stderr:\n{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}

#[test]
fn bad_configs_are_refused_with_the_file_and_key() {
    let s = Setup::new();
    let cert = s.cert("aws", 1);

    phase("no config");
    let out = Command::new(atoll_exe()).arg("agent").output().unwrap();
    assert_refused(&out, "atoll agent needs --config FILE");

    phase("invalid values and unknown keys name the file and the key");
    let path = s.config("bad-name.yaml", 1, &cert, "data", "");
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("name: aws", "name: AWS")).unwrap();
    assert_refused(&agent(&path), "bad-name.yaml: cluster.name: cluster name \"AWS\" is invalid");
    let path = s.config("unknown.yaml", 1, &cert, "data", "colour: blue\n");
    assert_refused(&agent(&path), "unknown.yaml: colour: unknown field `colour`");
    let path = s.config("timing.yaml", 1, &cert, "data", "raft: {heartbeat_ms: 100, election_timeout_min_ms: 150}\n");
    assert_refused(&agent(&path), "raft.election_timeout_min_ms: must be at least twice raft.heartbeat_ms");
    let path = s.dir.path().join("missing.yaml");
    assert_refused(&agent(&path), "missing.yaml");
}

#[test]
fn wrong_certificates_are_refused() {
    let s = Setup::new();
    phase("a certificate for another replica");
    let cert = s.cert("aws", 1);
    let path = s.config("other-node.yaml", 2, &cert, "data2", "");
    assert_refused(
        &agent(&path),
        "is for spiffe://atoll/cluster/aws/node/1, but this replica is spiffe://atoll/cluster/aws/node/2",
    );

    phase("an expired certificate");
    let now = time::OffsetDateTime::now_utc();
    s.ca.issue_between(
        &Identity::node("aws".parse().unwrap(), 3),
        now - time::Duration::days(3),
        now - time::Duration::days(1),
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap()
    .save(s.dir.path(), "expired")
    .unwrap();
    let path = s.config("expired.yaml", 3, "expired", "data3", "");
    assert_refused(&agent(&path), "the certificate expired at");

    phase("a certificate from another CA");
    let other = CertificateAuthority::generate("other", Duration::from_secs(86_400)).unwrap();
    other
        .issue(&Identity::node("aws".parse().unwrap(), 4), Duration::from_secs(86_400), KeyAlgorithm::EcdsaP256)
        .unwrap()
        .save(s.dir.path(), "foreign")
        .unwrap();
    let path = s.config("foreign.yaml", 4, "foreign", "data4", "");
    assert_refused(&agent(&path), "was not issued by this CA");
}

#[test]
fn another_replicas_data_directory_is_refused() {
    let s = Setup::new();
    phase("a single-replica group starts on data/ and is stopped");
    let cert = s.cert("aws", 1);
    let path = s.config("one.yaml", 1, &cert, "data", "");
    let mut child = Command::new(atoll_exe())
        .args(["agent", "--config"])
        .arg(&path)
        .env(EXIT_WITH_PARENT_ENV, "1")
        .stderr(std::fs::File::create(s.dir.path().join("one.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !s.dir.path().join("data/atoll-replica.json").exists() {
        assert!(std::time::Instant::now() < deadline, "the replica did not create its data directory");
        assert!(child.try_wait().unwrap().is_none(), "the replica exited");
        #[allow(clippy::disallowed_methods)] // synchronous test, no runtime
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(s.dir.path().join("one.log")).unwrap_or_default();
    assert!(status.success(), "the replica did not stop cleanly ({status}):\n{log}");

    phase("node 5 pointed at node 1's data directory refuses to start");
    let cert5 = s.cert("aws", 5);
    let path = s.config("five.yaml", 5, &cert5, "data", "");
    assert_refused(&agent(&path), "belongs to node 1 of cluster \"aws\", but the config says node 5");

    phase("a foreign directory is refused too");
    std::fs::create_dir_all(s.dir.path().join("etcd-data/member")).unwrap();
    let path = s.config("foreign-dir.yaml", 5, &cert5, "etcd-data", "");
    assert_refused(&agent(&path), "is not an atoll data directory");
}

#[test]
fn check_config_prints_the_effective_config_starts_nothing_and_names_the_key() {
    let s = Setup::new();
    let token = format!("atoll-join.{}.{}", "5".repeat(64), "a".repeat(64));
    let path = s.config(
        "check.yaml",
        2,
        "absent",
        "data",
        &format!("gateway: {{addr: \"gw.example:7000\", join_token: \"{token}\"}}\n"),
    );
    let check = |path: &Path, env: &[(&str, &str)]| {
        Command::new(atoll_exe())
            .args(["agent", "--check-config", "--config"])
            .arg(path)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };

    phase("a valid file: the effective config on stdout (defaults in, secrets out), nothing started");
    let out = check(&path, &[("ATOLL__CLUSTER__LABELS", "[aws, default]")]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let effective: serde_yaml_ng::Value = serde_yaml_ng::from_str(&stdout).expect("the effective config is YAML");
    assert_eq!(effective["node"]["id"], serde_yaml_ng::Value::from(2));
    assert_eq!(
        effective["cluster"]["labels"],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[aws, default]").unwrap()
    );
    assert_eq!(effective["raft"]["heartbeat_ms"], serde_yaml_ng::Value::from(20), "defaults are filled in");
    assert_eq!(effective["gateway"]["join_token"], serde_yaml_ng::Value::from("<redacted>"));
    assert!(!stdout.contains(&"5".repeat(64)), "{stdout}");
    assert!(stderr.contains("valid: node 2 of cluster aws"), "{stderr}");
    assert!(!s.dir.path().join("data").exists(), "no data directory was made");

    phase("the effective config is a config: checked again, it is valid");
    let again = s.dir.path().join("again.yaml");
    std::fs::write(&again, stdout.replace("<redacted>", &token)).unwrap();
    assert!(check(&again, &[]).status.success());

    phase("errors name the file and the key, from the file or from the environment, and exit 1");
    let out = check(&path, &[("ATOLL__RAFT__HEARTBEAT_MS", "100")]);
    assert_eq!(out.status.code(), Some(1));
    assert_refused(&out, "check.yaml: raft.election_timeout_min_ms: must be at least twice raft.heartbeat_ms");
    assert!(out.stdout.is_empty(), "nothing printed as effective when invalid");
    assert_refused(
        &check(&path, &[("ATOLL__NODE__ID_FROM_HOSTNAME", "true")]),
        "node.id: give node.id or node.id_from_hostname, not both",
    );
    assert_refused(&check(&path, &[("ATOLL__CLUSTR__NAME", "x")]), "ATOLL__CLUSTR__NAME");

    phase("the gateway's check, with a PostgreSQL URL's password hidden");
    let gateway = s.dir.path().join("gateway.yaml");
    std::fs::write(
        &gateway,
        "listen: \"127.0.0.1:7000\"\nca_dir: ca\ndatabase: {postgres: {url: \"postgres://atoll:pw@db:5432/atoll\"}}\nha: {enabled: true}\nstorage: {local: {path: blobs, shared: true}}\n",
    )
    .unwrap();
    let out = Command::new(atoll_exe()).args(["gateway", "--check-config", "--config"]).arg(&gateway).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("postgres://atoll:<redacted>@db:5432/atoll") && !stdout.contains(":pw@"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("one of several replicas"));
    std::fs::write(&gateway, "listen: \"127.0.0.1:7000\"\nca_dir: ca\nha: {enabled: true}\n").unwrap();
    let out = Command::new(atoll_exe()).args(["gateway", "--check-config", "--config"]).arg(&gateway).output().unwrap();
    assert_refused(&out, "ha.enabled");
}

#[test]
fn a_statefulset_pod_takes_its_id_from_its_host_name() {
    assert!(nix::unistd::geteuid().is_root(), "this test sets host names in UTS namespaces: it needs root");
    let s = Setup::new();
    let path = s.config("sts.yaml", 1, "absent", "data", "");
    let mut text = std::fs::read_to_string(&path).unwrap().replace("node: {id: 1,", "node: {id_from_hostname: true,");
    // Voters elsewhere: whichever id the host name gives, this replica is not one of them.
    let peers_at = text.find("peers:").unwrap();
    let peers_end = peers_at + text[peers_at..].find('\n').unwrap();
    text.replace_range(
        peers_at..peers_end,
        "peers: [{id: 10, addr: \"127.0.0.2:7101\"}, {id: 11, addr: \"127.0.0.3:7101\"}, {id: 12, addr: \"127.0.0.4:7101\"}]",
    );
    std::fs::write(&path, &text).unwrap();
    let in_pod = |host: &str, config: &Path| {
        let script = format!(
            "hostname {host} && exec {} agent --check-config --config {}",
            atoll_exe().display(),
            config.display()
        );
        Command::new("unshare").args(["--uts", "sh", "-c", &script]).output().unwrap()
    };
    let id_of = |out: &Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let effective: serde_yaml_ng::Value = serde_yaml_ng::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
        effective["node"]["id"].as_u64().unwrap()
    };

    phase("the ordinal ending the host name, plus one");
    assert_eq!(id_of(&in_pod("atoll-agent-0", &path)), 1);
    assert_eq!(id_of(&in_pod("atoll-agent-2", &path)), 3);

    phase("a host name without an ordinal is refused, naming the key");
    assert_refused(
        &in_pod("build-host", &path),
        "node.id_from_hostname: the host name \"build-host\" does not end in -<ordinal>",
    );

    phase("a pod whose volume was lost rejoins under the id node.hostname_ids gives it");
    let moved = s.dir.path().join("moved.yaml");
    std::fs::write(
        &moved,
        text.replace("id_from_hostname: true,", "id_from_hostname: true, hostname_ids: {atoll-agent-1: 4},"),
    )
    .unwrap();
    assert_eq!(id_of(&in_pod("atoll-agent-1", &moved)), 4);
    assert_eq!(id_of(&in_pod("atoll-agent-2", &moved)), 3, "the other pods keep their ordinals' ids");
}

#[tokio::test]
async fn a_new_admin_token_is_made_in_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let port = allocate_ports(1, 0).unwrap()[0];
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!("listen: \"127.0.0.1:{port}\"\nca_dir: ca\ndatabase: {{sqlite: {{path: gateway.db}}}}\n"),
    )
    .unwrap();
    let mint = |name: &str| {
        Command::new(atoll_exe())
            .args(["gateway", "--config"])
            .arg(&config)
            .args(["--new-admin-token", name])
            .output()
            .unwrap()
    };

    phase("a bad name is refused; a good one prints the token, nothing else on stdout");
    assert_refused(&mint("no spaces"), "--new-admin-token: \"no spaces\" must be 1 to 63");
    let out = mint("ops");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("atoll-user."), "{token}");

    phase("the gateway, started on that database, takes it as an admin's");
    let mut gateway = Command::new(atoll_exe())
        .args(["gateway", "--config"])
        .arg(&config)
        .env(EXIT_WITH_PARENT_ENV, "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ca = dir.path().join("ca/ca.pem");
    common::eventually(Duration::from_secs(20), "the gateway makes its CA", || async { ca.exists().then_some(()) })
        .await;
    let cli = dir.path().join("atoll.yaml");
    std::fs::write(
        &cli,
        format!("gateway: [\"127.0.0.1:{port}\"]\ntoken: \"{token}\"\ntls: {{ca: {}}}\n", ca.display()),
    )
    .unwrap();
    let client = atoll::cli_config::CliConfig::load(&cli).unwrap().gateway_client().unwrap();
    let created = common::eventually(Duration::from_secs(20), "an admin call with the minted token", || async {
        client
            .join_token(&atoll_api::gateway::JoinTokenRequest {
                cluster: "aws".into(),
                labels: vec![],
                ttl_s: None,
                replicas: Some(3),
            })
            .await
            .ok()
    })
    .await;
    assert!(created.token.starts_with("atoll-join."));
    let _ = gateway.kill();
    let _ = gateway.wait();
}
