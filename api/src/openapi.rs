//! Keeping each daemon's OpenAPI document true to its router.
//!
//! Each API module embeds its document with `include_str!` and has a test calling [`check`] on
//! its own source: every `.route("PATH", ...)` must be documented, every documented path must be
//! routed, and the error schema must list every [`ErrorCode`].

use crate::ErrorCode;

/// Paths routed in `router_source` (`{*rest}` written as `{rest}`, as OpenAPI does).
fn routed_paths(router_source: &str) -> Vec<String> {
    router_source
        .split(".route(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|path| path.replace("{*", "{"))
        .collect()
}

/// Differences between a router and its OpenAPI document, one line each (empty when they agree).
pub fn check(router_source: &str, document: &str) -> Vec<String> {
    let document: serde_json::Value = match serde_json::from_str(document) {
        Ok(value) => value,
        Err(e) => return vec![format!("the document is not JSON: {e}")],
    };
    let documented: Vec<String> =
        document["paths"].as_object().map(|paths| paths.keys().cloned().collect()).unwrap_or_default();
    let routed = routed_paths(router_source);
    let mut problems = Vec::new();
    problems
        .extend(routed.iter().filter(|p| !documented.contains(p)).map(|p| format!("{p} is routed but not documented")));
    problems
        .extend(documented.iter().filter(|p| !routed.contains(p)).map(|p| format!("{p} is documented but not routed")));
    let codes = &document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"];
    for code in ErrorCode::ALL {
        let name = serde_json::to_value(code).unwrap_or_default();
        if !codes.as_array().is_some_and(|listed| listed.contains(&name)) {
            problems.push(format!("error code {name} is missing from components.schemas.Error"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_undocumented_and_unrouted_paths_and_missing_codes() {
        let source = r#".route("/v1/a", get(a)).route("/v1/b/{*key}", put(b))"#;
        let document = r#"{"paths": {"/v1/a": {}, "/v1/c": {}}, "components": {"schemas": {"Error": {"properties": {"error": {"properties": {"code": {"enum": ["bad_request"]}}}}}}}}"#;
        let problems = check(source, document);
        assert!(problems.contains(&"/v1/b/{key} is routed but not documented".to_string()), "{problems:?}");
        assert!(problems.contains(&"/v1/c is documented but not routed".to_string()), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("\"revoked\"")), "{problems:?}");
        assert!(!problems.iter().any(|p| p.contains("/v1/a")), "{problems:?}");
    }
}
