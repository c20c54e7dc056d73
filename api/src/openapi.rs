//! Keeping each daemon's OpenAPI document true to its router.
//!
//! Each API module embeds its document with `include_str!` and has a test calling [`check`] on
//! its own source: every `.route("PATH", ...)` must be documented, every documented path must be
//! routed, the error schema must list every [`ErrorCode`], and every operation must document
//! the refusals the framework makes before a handler runs: 400 where a query or an integer path
//! parameter may not parse or a body may not be the JSON asked for, 413 where there is a body,
//! 415 where that body is JSON.

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
    problems.extend(framework_statuses(&document));
    problems
}

/// Operations that do not document a status the framework answers for them.
fn framework_statuses(document: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(paths) = document["paths"].as_object() else { return problems };
    for (path, item) in paths {
        let Some(item) = item.as_object() else { continue };
        let shared = item.get("parameters").and_then(|p| p.as_array()).cloned().unwrap_or_default();
        for (method, operation) in item.iter().filter(|(key, _)| *key != "parameters") {
            let own = operation["parameters"].as_array().cloned().unwrap_or_default();
            let parsed = shared
                .iter()
                .chain(&own)
                .any(|p| p["in"] == "query" || (p["in"] == "path" && p["schema"]["type"] == "integer"));
            let body = &operation["requestBody"]["content"];
            let mut needed = Vec::new();
            if parsed || body.is_object() {
                needed.push("400");
            }
            if body.is_object() {
                needed.push("413");
            }
            if body.get("application/json").is_some() {
                needed.push("415");
            }
            for status in needed {
                if operation["responses"].get(status).is_none() {
                    problems.push(format!("{} {path} does not document {status}", method.to_uppercase()));
                }
            }
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

    #[test]
    fn operations_must_document_the_framework_refusals() {
        let document = serde_json::json!({"paths": {
            "/v1/jobs": {"get": {"parameters": [{"in": "query", "name": "limit"}], "responses": {"200": {}}}},
            "/v1/chunks/{index}": {
                "parameters": [{"in": "path", "name": "index", "schema": {"type": "integer"}}],
                "get": {"responses": {"200": {}, "400": {}}},
                "put": {"requestBody": {"content": {"application/octet-stream": {}}}, "responses": {"400": {}}}
            },
            "/v1/specs": {"post": {"requestBody": {"content": {"application/json": {}}}, "responses": {"400": {}, "413": {}}}},
            "/v1/names/{name}": {"parameters": [{"in": "path", "name": "name", "schema": {"type": "string"}}], "get": {"responses": {}}}
        }});
        let problems = framework_statuses(&document);
        assert_eq!(
            problems,
            vec![
                "PUT /v1/chunks/{index} does not document 413".to_string(),
                "GET /v1/jobs does not document 400".to_string(),
                "POST /v1/specs does not document 415".to_string(),
            ],
            "{problems:?}"
        );
    }
}
