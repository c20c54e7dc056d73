//! Newtypes for the names that must never be swapped: cluster names, labels, node ids, terms,
//! job ids.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::Serialize;

/// A cluster's name: 1 to 63 of `[a-z0-9-]`, starting with a letter or digit (a DNS label, so it
/// fits in identities, Kubernetes names and metric labels).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is invalid: {reason}")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

fn check_dns_label(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let invalid = |reason| Err(InvalidName { what, value: value.to_string(), reason });
    if value.is_empty() {
        return invalid("it is empty");
    }
    if value.len() > 63 {
        return invalid("it is longer than 63 characters");
    }
    if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return invalid("only lowercase letters, digits and '-' are allowed");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return invalid("it must start and end with a letter or digit");
    }
    Ok(())
}

impl FromStr for ClusterName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_dns_label("cluster name", s)?;
        Ok(Self(s.to_string()))
    }
}

impl TryFrom<String> for ClusterName {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl<'de> Deserialize<'de> for ClusterName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Read as the string it is (a `&ClusterName` goes where a `&str` is asked); making one checks it.
impl std::ops::Deref for ClusterName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ClusterName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ClusterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ClusterName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ClusterName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for ClusterName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<ClusterName> for String {
    fn eq(&self, other: &ClusterName) -> bool {
        self == &other.0
    }
}

impl PartialEq<ClusterName> for &str {
    fn eq(&self, other: &ClusterName) -> bool {
        *self == other.0
    }
}

impl From<ClusterName> for String {
    fn from(name: ClusterName) -> String {
        name.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A cluster label used by job selectors: 1 to 63 of `[a-z0-9._-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Label {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| Err(InvalidName { what: "label", value: s.to_string(), reason });
        if s.is_empty() {
            return invalid("it is empty");
        }
        if s.len() > 63 {
            return invalid("it is longer than 63 characters");
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')) {
            return invalid("only lowercase letters, digits, '.', '_' and '-' are allowed");
        }
        Ok(Self(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A replica's id within its cluster's Raft group; never reused (a wiped replica rejoins under
/// a new id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(NodeId)
    }
}

/// A Raft term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A job's id: its pipeline's id and its name, `<pipeline>.<name>` (unique across pipelines).
/// Opaque on the wire: any string is read as an id, and one the gateway never made is simply
/// not found.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// The id of the job `name` of pipeline `pipeline`. An included job's name has `/` in it
    /// (`flow/test`); its id has `.` there (`<pipeline>.flow.test`), so an id is one path
    /// segment in URLs and file names. No name has a `.`, so two names never share an id.
    pub fn new(pipeline: &str, name: &str) -> Self {
        Self(format!("{pipeline}.{}", name.replace('/', ".")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for JobId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Read as the string it is (a `&JobId` goes where a `&str` is asked); making one takes
/// [`JobId::new`] or an explicit conversion.
impl std::ops::Deref for JobId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for JobId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for JobId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<JobId> for String {
    fn eq(&self, other: &JobId) -> bool {
        self == &other.0
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_dns_labels() {
        for ok in ["aws", "gcp-eu-1", "a", "0x"] {
            assert!(ok.parse::<ClusterName>().is_ok(), "{ok}");
        }
        for bad in ["", "AWS", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            let err = bad.parse::<ClusterName>().unwrap_err();
            assert!(err.to_string().starts_with("cluster name"), "{err}");
        }
    }

    #[test]
    fn labels_allow_dots_and_underscores() {
        assert!("gpu.nvidia_a100".parse::<Label>().is_ok());
        assert!("Has Space".parse::<Label>().is_err());
    }

    #[test]
    fn job_ids_join_pipeline_and_name_and_stay_plain_strings_on_the_wire() {
        let id = JobId::new("0123456789ab", "build");
        assert_eq!(id.as_str(), "0123456789ab.build");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"0123456789ab.build\"");
        assert_eq!(serde_json::from_str::<JobId>("\"anything\"").unwrap(), JobId::from("anything"));
        assert_eq!(serde_json::to_string(&Term(7)).unwrap(), "7");
    }

    #[test]
    fn names_and_numbers_print_padded_as_their_strings_and_numbers_do() {
        let aws: ClusterName = "aws".parse().unwrap();
        assert_eq!(format!("[{aws:<6}|{aws:>6}]"), "[aws   |   aws]");
        assert_eq!(format!("[{:<6}]", JobId::from("p.a")), "[p.a   ]");
        assert_eq!(format!("[{:<6}]", "x.y".parse::<Label>().unwrap()), "[x.y   ]");
        assert_eq!(format!("[{:>4}|{:>4}]", Term(7), NodeId(3)), "[   7|   3]");
    }

    #[test]
    fn names_deserialize_with_validation() {
        let err = serde_json::from_str::<ClusterName>("\"Bad\"").unwrap_err();
        assert!(err.to_string().contains("cluster name \"Bad\" is invalid"), "{err}");
    }
}
