//! Identities carried in certificates as SAN URIs.
//!
//! - `spiffe://atoll/cluster/<cluster>/node/<id>`: an agent replica;
//! - `spiffe://atoll/gateway/<id>`: a gateway replica;
//! - `spiffe://atoll/operator/<name>`: an operator's client certificate (the CLI), allowed to
//!   administer replicas directly.
//!
//! A peer is identified by the URI of its verified certificate, never by its network address.

use std::fmt;
use std::str::FromStr;

use crate::ids::ClusterName;
use crate::ids::NodeId;

pub const TRUST_DOMAIN: &str = "atoll";

/// Who is at the other end of a verified mTLS connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Node { cluster: ClusterName, node: NodeId },
    Gateway { id: String },
    Operator { name: String },
}

impl Identity {
    pub fn node(cluster: ClusterName, node: u64) -> Self {
        Identity::Node { cluster, node: NodeId(node) }
    }

    pub fn uri(&self) -> String {
        match self {
            Identity::Node { cluster, node } => format!("spiffe://{TRUST_DOMAIN}/cluster/{cluster}/node/{node}"),
            Identity::Gateway { id } => format!("spiffe://{TRUST_DOMAIN}/gateway/{id}"),
            Identity::Operator { name } => format!("spiffe://{TRUST_DOMAIN}/operator/{name}"),
        }
    }

    /// Whether this is a replica of `cluster`.
    pub fn is_replica_of(&self, cluster: &ClusterName) -> bool {
        matches!(self, Identity::Node { cluster: c, .. } if c == cluster)
    }

    pub fn is_operator(&self) -> bool {
        matches!(self, Identity::Operator { .. })
    }

    /// Pick the atoll identity among a certificate's URI SANs.
    pub fn from_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Result<Self, IdentityError> {
        let mut seen = Vec::new();
        for uri in uris {
            match uri.parse() {
                Ok(identity) => return Ok(identity),
                Err(_) => seen.push(uri.to_string()),
            }
        }
        Err(IdentityError::NoIdentity { uris: seen })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{uri:?} is not an atoll identity: {reason}")]
    Malformed { uri: String, reason: String },
    #[error("the certificate carries no atoll identity (URI SANs: {uris:?})")]
    NoIdentity { uris: Vec<String> },
}

fn simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let malformed = |reason: &str| IdentityError::Malformed { uri: uri.to_string(), reason: reason.to_string() };
        let rest = uri
            .strip_prefix("spiffe://")
            .and_then(|r| r.strip_prefix(TRUST_DOMAIN))
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| malformed("expected spiffe://atoll/..."))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["cluster", cluster, "node", id] => {
                let cluster = cluster.parse::<ClusterName>().map_err(|e| malformed(&e.to_string()))?;
                let node = id.parse::<u64>().map_err(|_| malformed("node id is not a number"))?;
                Ok(Identity::Node { cluster, node: NodeId(node) })
            }
            ["gateway", id] if simple_name(id) => Ok(Identity::Gateway { id: id.to_string() }),
            ["operator", name] if simple_name(name) => Ok(Identity::Operator { name: name.to_string() }),
            _ => Err(malformed("expected cluster/<name>/node/<id>, gateway/<id> or operator/<name>")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for uri in ["spiffe://atoll/cluster/aws/node/3", "spiffe://atoll/gateway/g1", "spiffe://atoll/operator/admin"] {
            let id: Identity = uri.parse().unwrap();
            assert_eq!(id.uri(), uri);
        }
    }

    #[test]
    fn refuses_other_trust_domains_and_shapes() {
        for bad in [
            "spiffe://other/cluster/aws/node/1",
            "spiffe://atoll/cluster/AWS/node/1",
            "spiffe://atoll/cluster/aws/node/x",
            "spiffe://atoll/cluster/aws",
            "https://atoll/cluster/aws/node/1",
            "spiffe://atoll/operator/",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn picks_the_atoll_uri_among_others() {
        let id = Identity::from_uris(["https://example.com", "spiffe://atoll/gateway/main"]).unwrap();
        assert_eq!(id, Identity::Gateway { id: "main".into() });
        assert!(matches!(Identity::from_uris(["urn:x"]), Err(IdentityError::NoIdentity { .. })));
    }

    #[test]
    fn replica_membership() {
        let aws: ClusterName = "aws".parse().unwrap();
        let gcp: ClusterName = "gcp".parse().unwrap();
        let id = Identity::node(aws.clone(), 1);
        assert!(id.is_replica_of(&aws));
        assert!(!id.is_replica_of(&gcp));
    }
}
