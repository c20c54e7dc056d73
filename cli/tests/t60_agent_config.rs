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
