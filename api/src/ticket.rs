//! Edge tickets: short-lived permissions the gateway signs for moving one output over one edge.
//!
//! A ticket names what may be done (`op`), with which blob (`digest`), between which clusters
//! (`from` holds the parent's output, `to` runs the child), for which child job, until when. The
//! gateway signs it with the mesh CA's key; every replica verifies it with the CA certificate it
//! already trusts, so no cluster asks the gateway before serving a transfer, and a ticket is good
//! for nothing but its one edge. The caller's certificate must belong to the cluster the ticket
//! names for its side (checked by [`Ticket::authorizes`]).
//!
//! Wire form: `<hex of the claims as JSON>.<hex of the ECDSA P-256 signature over those bytes>`
//! (the `x-atoll-ticket` header).

use rcgen::SigningKey;
use serde::Deserialize;
use serde::Serialize;

use crate::Identity;
use crate::ids::ClusterName;
use crate::ids::JobId;

/// The header a ticket travels in.
pub const HEADER: &str = "x-atoll-ticket";
/// How long a ticket is good for, unless the gateway says otherwise.
pub const DEFAULT_TTL_MS: i64 = 10 * 60 * 1000;
/// Clock difference between the gateway and a replica that is tolerated.
const SKEW_MS: i64 = 30_000;
/// Longest ticket accepted (bounds what a stolen ticket is worth).
const MAX_CLAIMS: usize = 4096;

/// What a ticket allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketOp {
    /// `to` reads the blob from `from` (served by `from`).
    Pull,
    /// `from` writes the blob into `to` (served by `to`).
    Push,
    /// `from` writes the blob into the gateway's relay store.
    RelayPut,
    /// `to` reads the blob from the gateway's relay store.
    RelayGet,
}

impl TicketOp {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketOp::Pull => "pull",
            TicketOp::Push => "push",
            TicketOp::RelayPut => "relay_put",
            TicketOp::RelayGet => "relay_get",
        }
    }

    /// The cluster whose replicas may present the ticket: the writer for a write, the reader
    /// for a read.
    fn caller(self, claims: &Ticket) -> &str {
        match self {
            TicketOp::Pull | TicketOp::RelayGet => &claims.to,
            TicketOp::Push | TicketOp::RelayPut => &claims.from,
        }
    }
}

/// The claims of a ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    pub op: TicketOp,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// The parent's cluster (holds the output).
    pub from: ClusterName,
    /// The child's cluster (needs it).
    pub to: ClusterName,
    /// The child job the transfer is for.
    pub job: JobId,
    /// Unix milliseconds after which the ticket is refused.
    pub expires_ms: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("no ticket (the {HEADER} header) was presented")]
    Missing,
    #[error("the ticket is malformed: {0}")]
    Malformed(String),
    #[error("the ticket's signature does not verify against the mesh CA")]
    BadSignature,
    #[error("the ticket expired {0} ms ago")]
    Expired(i64),
    #[error("the ticket does not allow this: {0}")]
    Mismatch(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl Ticket {
    /// Sign with the CA's key (the gateway).
    pub fn sign(&self, ca_key: &rcgen::KeyPair) -> Result<String, rcgen::Error> {
        let claims = serde_json::to_vec(self).expect("plain data serializes");
        let signature = ca_key.sign(&claims)?;
        Ok(format!("{}.{}", hex(&claims), hex(&signature)))
    }

    /// Parse `token` and check its signature against any of `ca_certs` (DER) and its expiry.
    pub fn verify(token: &str, ca_certs: &[Vec<u8>], now_ms: i64) -> Result<Ticket, TicketError> {
        let malformed = |why: &str| TicketError::Malformed(why.to_string());
        if token.len() > 2 * MAX_CLAIMS + 512 {
            return Err(malformed("too long"));
        }
        let (claims_hex, signature_hex) = token.split_once('.').ok_or_else(|| malformed("no '.'"))?;
        let claims = unhex(claims_hex).ok_or_else(|| malformed("the claims are not hex"))?;
        let signature = unhex(signature_hex).ok_or_else(|| malformed("the signature is not hex"))?;
        let signed_by_ca = ca_certs.iter().any(|der| {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return false };
            let key = aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
                cert.public_key().subject_public_key.data.as_ref(),
            );
            key.verify(&claims, &signature).is_ok()
        });
        if !signed_by_ca {
            return Err(TicketError::BadSignature);
        }
        let ticket: Ticket = serde_json::from_slice(&claims).map_err(|e| TicketError::Malformed(e.to_string()))?;
        if now_ms > ticket.expires_ms + SKEW_MS {
            return Err(TicketError::Expired(now_ms - ticket.expires_ms));
        }
        Ok(ticket)
    }

    /// Whether this ticket lets `caller` do `op` with `digest`, served by `server` (a cluster
    /// name, or `None` for the gateway).
    pub fn authorizes(
        &self,
        op: TicketOp,
        digest: &str,
        caller: Option<&Identity>,
        server: Option<&str>,
    ) -> Result<(), TicketError> {
        let mismatch = |why: String| Err(TicketError::Mismatch(why));
        if self.op != op {
            return mismatch(format!("it is a {} ticket, this is a {}", self.op.as_str(), op.as_str()));
        }
        if self.digest != digest {
            return mismatch(format!("it is for {}, not {digest}", self.digest));
        }
        let served_by = match op {
            TicketOp::Pull => Some(self.from.as_str()),
            TicketOp::Push => Some(self.to.as_str()),
            TicketOp::RelayPut | TicketOp::RelayGet => None,
        };
        if served_by != server {
            return mismatch(format!(
                "it is to be served by {}, not {}",
                served_by.unwrap_or("the gateway"),
                server.unwrap_or("the gateway")
            ));
        }
        let allowed = op.caller(self);
        match caller {
            Some(Identity::Node { cluster, .. }) if cluster.as_str() == allowed => Ok(()),
            Some(other) => mismatch(format!("it is for replicas of {allowed}, not {other}")),
            None => mismatch(format!("it is for replicas of {allowed}; the caller presented no certificate")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::CertificateAuthority;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("test", Duration::from_secs(3600)).unwrap()
    }

    fn ticket(op: TicketOp, expires_ms: i64) -> Ticket {
        Ticket {
            op,
            digest: format!("sha256:{}", "ab".repeat(32)),
            from: "aws".parse().unwrap(),
            to: "onprem".parse().unwrap(),
            job: "0123456789ab.test".into(),
            expires_ms,
        }
    }

    fn node(cluster: &str) -> Identity {
        Identity::node(cluster.parse().unwrap(), 1)
    }

    #[test]
    fn a_signed_ticket_verifies_and_authorizes_exactly_its_edge() {
        let ca = ca();
        let t = ticket(TicketOp::Pull, 10_000);
        let token = ca.sign_ticket(&t).unwrap();
        let back = Ticket::verify(&token, &[ca.cert_der().unwrap()], 9_000).unwrap();
        assert_eq!(back, t);
        let digest = t.digest.clone();
        back.authorizes(TicketOp::Pull, &digest, Some(&node("onprem")), Some("aws")).unwrap();
        // Another caller, another server, another op, another blob: refused, saying why.
        let refusals = [
            back.authorizes(TicketOp::Pull, &digest, Some(&node("gcp")), Some("aws")),
            back.authorizes(TicketOp::Pull, &digest, None, Some("aws")),
            back.authorizes(TicketOp::Pull, &digest, Some(&node("onprem")), Some("gcp")),
            back.authorizes(TicketOp::Push, &digest, Some(&node("aws")), Some("onprem")),
            back.authorizes(TicketOp::Pull, &format!("sha256:{}", "cd".repeat(32)), Some(&node("onprem")), Some("aws")),
        ];
        for refusal in refusals {
            assert!(matches!(refusal, Err(TicketError::Mismatch(_))), "{refusal:?}");
        }
    }

    #[test]
    fn writers_present_push_and_relay_put_tickets_readers_relay_get() {
        let ca = ca();
        let der = [ca.cert_der().unwrap()];
        for (op, caller, server) in [
            (TicketOp::Push, "aws", Some("onprem")),
            (TicketOp::RelayPut, "aws", None),
            (TicketOp::RelayGet, "onprem", None),
        ] {
            let t = ticket(op, 10_000);
            let back = Ticket::verify(&ca.sign_ticket(&t).unwrap(), &der, 0).unwrap();
            back.authorizes(op, &t.digest, Some(&node(caller)), server).unwrap();
            let other = if caller == "aws" { "onprem" } else { "aws" };
            assert!(back.authorizes(op, &t.digest, Some(&node(other)), server).is_err(), "{op:?}");
        }
    }

    #[test]
    fn a_forged_or_tampered_ticket_is_refused() {
        let (ca, other) = (ca(), ca());
        let der = [ca.cert_der().unwrap()];
        let t = ticket(TicketOp::Pull, 10_000);
        // Signed by another CA.
        let forged = other.sign_ticket(&t).unwrap();
        assert_eq!(Ticket::verify(&forged, &der, 0), Err(TicketError::BadSignature));
        // Claims changed after signing (another destination), signature kept.
        let genuine = ca.sign_ticket(&t).unwrap();
        let (_, signature) = genuine.split_once('.').unwrap();
        let changed = Ticket { to: "gcp".parse().unwrap(), ..t.clone() };
        let tampered = format!("{}.{signature}", hex(&serde_json::to_vec(&changed).unwrap()));
        assert_eq!(Ticket::verify(&tampered, &der, 0), Err(TicketError::BadSignature));
        for garbage in ["", ".", "zz.zz", "abc", "00.00"] {
            assert!(Ticket::verify(garbage, &der, 0).is_err(), "{garbage:?}");
        }
        assert!(matches!(Ticket::verify(&"a".repeat(20_000), &der, 0), Err(TicketError::Malformed(_))));
    }

    #[test]
    fn an_expired_ticket_is_refused_after_the_skew_allowance() {
        let ca = ca();
        let der = [ca.cert_der().unwrap()];
        let token = ca.sign_ticket(&ticket(TicketOp::Pull, 100_000)).unwrap();
        assert!(Ticket::verify(&token, &der, 100_000 + SKEW_MS).is_ok());
        assert_eq!(Ticket::verify(&token, &der, 100_001 + SKEW_MS), Err(TicketError::Expired(SKEW_MS + 1)));
    }
}
