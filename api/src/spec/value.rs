//! Reading one value of a spec document: its kind, a map with its unknown keys, a string, a
//! list, a duration; each problem pushed with its path. Shared by the walk ([`super::walk`]) and
//! InfraBox's container keys ([`super::container`]).

use serde_json::Map;
use serde_json::Value;

use super::MAX_TIMEOUT_S;
use super::SpecProblem;
use super::path::join;
use super::path::printable;

pub(super) type Problems = Vec<SpecProblem>;

pub(super) fn push(problems: &mut Problems, path: &str, message: impl Into<String>) {
    problems.push(SpecProblem { path: path.to_string(), message: message.into() });
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// The object at `path`, with its unknown keys reported.
pub(super) fn object<'v>(
    v: &'v Value,
    path: &str,
    known: &[&str],
    problems: &mut Problems,
) -> Option<&'v Map<String, Value>> {
    let Value::Object(map) = v else {
        push(problems, path, format!("must be a map, found {}", kind_of(v)));
        return None;
    };
    for key in map.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        let near = known.iter().filter(|k| edits(k, key) <= 2).min_by_key(|k| edits(k, key));
        let message = match near {
            Some(near) => format!("unknown key (did you mean {near:?}?)"),
            // A job has too many keys to list well: the spec's reference lists them by type.
            None if known.len() > 12 => "unknown key (docs/job-spec.md lists the keys of each job type)".to_string(),
            None => format!("unknown key (known here: {})", known.join(", ")),
        };
        push(problems, &join(path, key), message);
    }
    Some(map)
}

/// The edit distance between two short words (for "did you mean"), capped at 3.
fn edits(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 2 || a.len() > 64 || b.len() > 64 {
        return 3;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()].min(3)
}

pub(super) fn string<'v>(v: &'v Value, path: &str, problems: &mut Problems) -> Option<&'v str> {
    match v {
        Value::String(s) => Some(s),
        other => {
            push(problems, path, format!("must be a string, found {}", kind_of(other)));
            None
        }
    }
}

pub(super) fn list<'v>(v: &'v Value, path: &str, problems: &mut Problems) -> Option<&'v [Value]> {
    match v {
        Value::Array(items) => Some(items),
        other => {
            push(problems, path, format!("must be a list, found {}", kind_of(other)));
            None
        }
    }
}

pub(super) fn integer(v: &Value, path: &str, min: u64, max: u64, problems: &mut Problems) -> Option<u64> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Some(n),
        Some(n) => {
            push(problems, path, format!("{n} is out of range ({min} to {max})"));
            None
        }
        None => {
            push(problems, path, format!("must be a whole number from {min} to {max}, found {}", shown(v)));
            None
        }
    }
}

/// A value as it appears in an error message (short; a string quoted with its control
/// characters escaped, as every message quotes what came from the document).
pub(super) fn shown(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        other => printable(&other.to_string()),
    };
    if s.chars().count() > 40 { format!("{}...", s.chars().take(40).collect::<String>()) } else { s }
}

/// `"<digits><unit>"` scaled by the unit's factor (`units` maps suffixes, `""` included, to
/// factors); `None` when malformed, of an unknown unit, or overflowing.
pub(super) fn with_unit(text: &str, units: &[(&str, u64)]) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let scale = units.iter().find(|(u, _)| *u == unit)?.1;
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// Seconds, as a number (InfraBox) or a string with a unit: `90`, `"90s"`, `"30m"`, `"2h"`.
pub(super) fn duration(v: &Value, path: &str, problems: &mut Problems) -> Option<u64> {
    let seconds = match v {
        Value::Number(_) => v.as_u64(),
        Value::String(s) => with_unit(s, &[("", 1), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]),
        _ => None,
    };
    match seconds {
        Some(s) if (1..=MAX_TIMEOUT_S).contains(&s) => Some(s),
        Some(s) => {
            push(problems, path, format!("{s} s is out of range (1 s to 7 days)"));
            None
        }
        None => {
            push(problems, path, format!("must be seconds (3600) or a duration (\"30m\", \"2h\"), found {}", shown(v)));
            None
        }
    }
}
