//! The contract between a replica and the helpers in a Kubernetes Job's pod (`atoll pod
//! inputs|output|started`, run from the helper image): the environment variables the replica
//! sets on the helpers and the helpers read, and the formats of their values. Both sides use
//! this module, so a name or a format changes in one place.

use serde::Deserialize;
use serde::Serialize;

/// The cluster whose replicas the helpers talk to (their certificates must name it).
pub const CLUSTER: &str = "ATOLL_CLUSTER";
/// The attempt's job id.
pub const JOB_ID: &str = "ATOLL_JOB_ID";
/// The attempt's number.
pub const ATTEMPT: &str = "ATOLL_ATTEMPT";
/// The replicas' pod listeners, tried in turn ([`encode_urls`]).
pub const URLS: &str = "ATOLL_POD_URLS";
/// The attempt's secret, shown to the replicas.
pub const SECRET: &str = "ATOLL_POD_SECRET";
/// The mesh CA (PEM) a replica's certificate is checked against.
pub const CA: &str = "ATOLL_POD_CA";
/// The blobs the inputs helper puts in place ([`encode_blobs`]).
pub const BLOBS: &str = "ATOLL_POD_BLOBS";
/// The file the output helper creates once it is ready to be stopped (its startup probe).
pub const STARTED: &str = "ATOLL_POD_STARTED";
/// The directory the output helper archives and stores (the job's `ATOLL_OUTPUT`).
pub const OUTPUT: &str = "ATOLL_OUTPUT";

/// One blob the inputs helper fetches and unpacks: a parent's output, or the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Where it is unpacked, in the pod.
    pub dir: String,
}

/// The value of [`BLOBS`]: a JSON list of `{"digest", "dir"}`.
pub fn encode_blobs(blobs: &[PodBlob]) -> String {
    serde_json::to_string(blobs).expect("a list of strings serializes")
}

/// Read the value of [`BLOBS`].
pub fn decode_blobs(value: &str) -> Result<Vec<PodBlob>, serde_json::Error> {
    serde_json::from_str(value)
}

/// The value of [`URLS`]: the URLs joined by commas.
pub fn encode_urls(urls: &[String]) -> String {
    urls.join(",")
}

/// Read the value of [`URLS`]: each URL trimmed, without a trailing `/`; empty ones skipped.
pub fn decode_urls(value: &str) -> Vec<String> {
    value.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_and_urls_read_back_as_written() {
        let blobs = vec![
            PodBlob { digest: format!("sha256:{}", "a".repeat(64)), dir: "/atoll/inputs/build".into() },
            PodBlob { digest: format!("sha256:{}", "f".repeat(64)), dir: "/atoll/source".into() },
        ];
        let value = encode_blobs(&blobs);
        assert_eq!(
            value,
            format!(
                r#"[{{"digest":"sha256:{}","dir":"/atoll/inputs/build"}},{{"digest":"sha256:{}","dir":"/atoll/source"}}]"#,
                "a".repeat(64),
                "f".repeat(64)
            ),
            "the format the helper images already read"
        );
        assert_eq!(decode_blobs(&value).unwrap(), blobs);
        assert_eq!(decode_blobs("[]").unwrap(), []);
        assert!(decode_blobs(r#"[{"digest": "x"}]"#).is_err(), "a blob without a dir");

        let urls = vec!["https://aws-1:7201".to_string(), "https://aws-2:7201".to_string()];
        assert_eq!(encode_urls(&urls), "https://aws-1:7201,https://aws-2:7201");
        assert_eq!(decode_urls(&encode_urls(&urls)), urls);
        assert_eq!(decode_urls(" https://a:1/ ,, https://b:2"), ["https://a:1", "https://b:2"]);
        assert!(decode_urls("").is_empty());
    }
}
