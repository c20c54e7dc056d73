//! Secrets (`atoll secret set|list|delete`, admin scope): values jobs name in their
//! `environment` as `{"$secret": NAME}`.
//!
//! - **At rest** each value is sealed with AES-256-GCM under a key derived from the CA's private
//!   key ([`atoll_api::pki::CertificateAuthority::derive_key`]), with a fresh random nonce and the
//!   secret's name as associated data. The database holds only sealed values; every replica
//!   derives the same key.
//! - **In use** a value leaves the gateway only to a replica of the cluster an attempt is bound
//!   to (its leader, in practice), over mTLS, while that attempt is assigned or running (`GET /v1/clusters/{name}/jobs/{id}/secrets`): not in
//!   the assignment (which the cluster's Raft log keeps), not in job details, the API's other
//!   answers or any log line. The executor puts it in the job's environment.
//! - A pipeline naming a secret that does not exist is refused at submit, with the job's path.

use std::collections::BTreeMap;

use atoll_api::ApiError;
use atoll_api::spec::PipelineSpec;
use atoll_api::spec::SecretRef;
use atoll_api::spec::SpecProblem;
use aws_lc_rs::aead;

use crate::Gateway;
use crate::jobs::db_error;
use crate::now_ms;

/// What the sealing key is derived for (changing it makes every stored value unreadable).
const PURPOSE: &str = "atoll secrets v1";
/// The largest secret value.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Seal `value` for `name` under `key`: hex of nonce, then ciphertext and tag.
pub fn seal(key: &[u8; 32], name: &str, value: &[u8]) -> String {
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, key).expect("a 256-bit key"));
    let mut nonce = [0u8; aead::NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).expect("the system random number generator failed");
    let mut sealed = value.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(name.as_bytes()),
        &mut sealed,
    )
    .expect("sealing a value of bounded size");
    let mut out = hex(&nonce);
    out.push_str(&hex(&sealed));
    out
}

/// Open what [`seal`] made for `name`; `None` when it was sealed under another key or name, or
/// was altered.
pub fn open(key: &[u8; 32], name: &str, sealed: &str) -> Option<Vec<u8>> {
    let bytes = unhex(sealed)?;
    if bytes.len() < aead::NONCE_LEN + aead::AES_256_GCM.tag_len() {
        return None;
    }
    let (nonce, body) = bytes.split_at(aead::NONCE_LEN);
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, key).ok()?);
    let mut body = body.to_vec();
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let plain = key.open_in_place(nonce, aead::Aad::from(name.as_bytes()), &mut body).ok()?;
    Some(plain.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

impl Gateway {
    fn secrets_key(&self) -> [u8; 32] {
        self.ca.authority().derive_key(PURPOSE)
    }

    /// Store a secret (replacing its value).
    pub async fn set_secret(&self, name: &str, value: &str, by: &str) -> Result<(), ApiError> {
        atoll_api::spec::secret_name(name).map_err(|why| ApiError::bad_request(format!("{name:?}: {why}")))?;
        if value.is_empty() {
            return Err(ApiError::bad_request("value: empty: a secret needs a value"));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(ApiError::bad_request(format!(
                "value: {} bytes; a secret has at most {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        if value.contains('\0') {
            return Err(ApiError::bad_request(
                "value: a secret cannot contain a NUL byte (it goes into an environment variable)",
            ));
        }
        let sealed = seal(&self.secrets_key(), name, value.as_bytes());
        self.db.put_secret(name, &sealed, now_ms(), by).await.map_err(db_error)?;
        tracing::info!(secret = name, by, "secret set");
        Ok(())
    }

    pub async fn list_secrets(&self) -> Result<Vec<atoll_api::gateway::SecretInfo>, ApiError> {
        let rows = self.db.secrets().await.map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|r| atoll_api::gateway::SecretInfo {
                name: r.name,
                updated_ms: r.updated_ms,
                updated_by: r.updated_by,
            })
            .collect())
    }

    pub async fn delete_secret(&self, name: &str, by: &str) -> Result<(), ApiError> {
        if !self.db.delete_secret(name).await.map_err(db_error)? {
            return Err(ApiError::not_found(format!("no secret named {name:?}")));
        }
        tracing::info!(secret = name, by, "secret deleted");
        Ok(())
    }

    /// The problems of a pipeline's secrets: a `$secret` that does not exist, a vault reference.
    pub async fn check_secrets(&self, spec: &PipelineSpec) -> Result<Vec<SpecProblem>, ApiError> {
        let mut problems = Vec::new();
        let mut known: BTreeMap<String, bool> = BTreeMap::new();
        for (i, job) in spec.jobs.iter().enumerate() {
            for used in job.secret_uses() {
                let path = format!("{}.{}", spec.job_path(i), used.path);
                match used.secret {
                    SecretRef::Secret(name) => {
                        let exists = match known.get(name) {
                            Some(exists) => *exists,
                            None => {
                                let exists = self.db.sealed_secret(name).await.map_err(db_error)?.is_some();
                                known.insert(name.clone(), exists);
                                exists
                            }
                        };
                        if !exists {
                            problems.push(SpecProblem {
                                path,
                                message: format!(
                                    "job {:?}: secret {name:?} does not exist (atoll secret set {name})",
                                    job.name
                                ),
                            });
                        }
                    }
                    SecretRef::Vault { .. } => problems.push(SpecProblem {
                        path,
                        message: format!(
                            "job {:?}: vault references are not read; store the value with `atoll secret set NAME` and name it as {{\"$secret\": NAME}}",
                            job.name
                        ),
                    }),
                }
            }
        }
        Ok(problems)
    }

    /// The secret variables of `job`'s attempt `attempt`, for the leader of `cluster` it is bound
    /// to (names to values); refused for an attempt not bound there.
    pub async fn job_secrets(
        &self,
        cluster: &str,
        job: &str,
        attempt: u32,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let bound = self.db.attempt_cluster(job, attempt).await.map_err(db_error)?;
        if bound.as_deref() != Some(cluster) {
            return Err(ApiError::forbidden(format!(
                "attempt {attempt} of job {job} is not bound to cluster {cluster}"
            )));
        }
        let row = self.job_row(job).await?;
        if row.attempt != attempt || !row.state.is_active() {
            return Err(ApiError::forbidden(format!(
                "attempt {attempt} of job {job} is not running on cluster {cluster}"
            )));
        }
        let pipeline = self.pipeline(&row.pipeline_id).await?;
        let spec = pipeline
            .spec
            .jobs
            .get(row.idx)
            .ok_or_else(|| ApiError::internal(format!("job {job} has no place in its pipeline's spec")))?;
        let key = self.secrets_key();
        // Each under its key: a variable's name, or `deployments[i].password` for a registry's.
        let mut out = BTreeMap::new();
        for used in spec.secret_uses() {
            let at = &used.path;
            let SecretRef::Secret(name) = used.secret else {
                return Err(ApiError::bad_request(format!("{at}: vault references are not read")));
            };
            let sealed = self
                .db
                .sealed_secret(name.as_str())
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found(format!("{at}: secret {name:?} no longer exists")))?;
            let value = open(&key, name.as_str(), &sealed).ok_or_else(|| {
                ApiError::internal(format!(
                    "{at}: secret {name:?} cannot be opened (sealed under another CA key, or altered)"
                ))
            })?;
            out.insert(used.key, String::from_utf8(value).map_err(|_| ApiError::internal("a secret is not text"))?);
        }
        tracing::info!(job, attempt, cluster, count = out.len(), "secrets delivered to the job's cluster");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_name_and_unaltered() {
        let key = [7u8; 32];
        let sealed = seal(&key, "TOKEN", b"s3cr3t");
        assert!(!sealed.contains(&hex(b"s3cr3t")), "not in the clear");
        assert_eq!(open(&key, "TOKEN", &sealed).as_deref(), Some(&b"s3cr3t"[..]));
        assert_ne!(seal(&key, "TOKEN", b"s3cr3t"), sealed, "a fresh nonce each time");
        assert_eq!(open(&[8u8; 32], "TOKEN", &sealed), None, "another key");
        assert_eq!(open(&key, "OTHER", &sealed), None, "moved to another name");
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(open(&key, "TOKEN", &String::from_utf8(altered).unwrap()), None, "altered");
        assert_eq!(open(&key, "TOKEN", "zz"), None);
        assert_eq!(open(&key, "TOKEN", ""), None);
    }
}
