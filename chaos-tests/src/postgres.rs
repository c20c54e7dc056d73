//! A PostgreSQL server for the gateway that the nemesis can crash and start again: the mesh's
//! server ([`atoll_mesh::postgres`]) in a temporary directory, without fsync. For the only
//! gateway it runs inside the gateway's namespace (only the gateway reaches it, on 127.0.0.1
//! there); for gateway replicas, in a namespace of its own on the bridge, so one replica can
//! be cut from the database alone (and the suite reads it at the end of a run).

use anyhow::Context;

const PORT: u16 = 5432;

/// A running server. Dropping it stops the server (immediately) and removes its directory.
pub struct Postgres {
    server: atoll_mesh::postgres::Postgres,
    // Dropped after the server (fields drop in order).
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Create a cluster in a fresh directory and start it in `netns`, listening on `ip`. The
    /// server binaries are `$PG_TEST_BIN` (scripts/test exports it), else the newest installed.
    pub fn start(netns: &str, ip: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("atoll-chaos-pg-").tempdir()?;
        let server = atoll_mesh::postgres::Postgres::start(atoll_mesh::postgres::PostgresSettings {
            dir: dir.path().to_path_buf(),
            ip: ip.to_string(),
            port: PORT,
            fsync: false,
            // Three replicas' pools (16 each) and listeners, and the suite's own.
            max_connections: 100,
            netns: Some(netns.to_string()),
            // The sandbox's addresses: the replicas and the suite's client in their namespaces.
            allow_from: vec![crate::sandbox::NETWORK.to_string()],
            bin: std::env::var_os("PG_TEST_BIN").map(Into::into),
        })
        .context("starting the gateway's PostgreSQL")?;
        Ok(Self { server, _dir: dir })
    }

    /// The URL the gateway connects to.
    pub fn url(&self) -> String {
        self.server.url().to_string()
    }

    /// Start the server (again).
    pub fn up(&self) -> anyhow::Result<()> {
        self.server.up()
    }

    /// Stop the server as a crash would (`immediate`: no checkpoint, clients cut off).
    pub fn crash(&self) -> anyhow::Result<()> {
        self.server.crash()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.server.crash();
    }
}
