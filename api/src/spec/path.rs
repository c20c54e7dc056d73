//! How problems are written: the path of a value inside the document, and quoted text made
//! printable. A leaf shared by the document reader and the walk.

/// The path of `key` inside the map at `path`. A key that is not a plain word (letters, digits,
/// `_`, `-`) is quoted with its control characters escaped, so a path is one printable,
/// unambiguous line: `jobs[0].environment."A\0B"`, `jobs[0]."a.b"`.
pub(super) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (true, false) => format!("{key:?}"),
        (false, true) => format!("{path}.{key}"),
        (false, false) => format!("{path}.{key:?}"),
    }
}

/// `text` with control characters escaped (`\0`, `\u{1b}`), the rest as it is: for messages
/// that quote what a parser said about the input.
pub(super) fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
}
