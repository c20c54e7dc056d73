//! `/metrics` answers: the format a scraper asks for, from one registry.
//!
//! The registries (prometheus-client) write OpenMetrics 1.0 text. Scrapers and tools that ask
//! for it (`Accept: application/openmetrics-text`) get it as written; everyone else, among them
//! those asking for `text/plain; version=0.0.4` and those that ask for nothing in particular,
//! gets the Prometheus text format 0.0.4, which differs in three things: a counter's `HELP` and
//! `TYPE` lines name its samples (`x_total`), there are no `UNIT` lines, and no `# EOF`.

use axum::http::HeaderValue;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;

/// A text format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for: the first of its media ranges, by preference
    /// (`q`, then order), that names OpenMetrics (version 1.0.0 or none) or the 0.0.4 text
    /// (`text/plain` without a version, or 0.0.4); the 0.0.4 text when none does.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        let mut ranges: Vec<(f32, usize, Format)> = Vec::new();
        for (position, range) in accept.split(',').enumerate() {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut quality = 1.0f32;
            let mut version = None;
            for parameter in parts {
                let Some((key, value)) = parameter.split_once('=') else { continue };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => quality = value.parse().unwrap_or(0.0),
                    "version" => version = Some(value.to_string()),
                    _ => {}
                }
            }
            let format = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0")) => Format::OpenMetrics,
                ("text/plain", None | Some("0.0.4")) => Format::Text,
                _ => continue,
            };
            if quality > 0.0 {
                ranges.push((quality, position, format));
            }
        }
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranges.first().map_or(Format::Text, |(_, _, format)| *format)
    }
}

/// The answer to a scrape: `openmetrics` (a registry's output) in the format `accept` asks for.
pub fn respond(accept: Option<&HeaderValue>, openmetrics: String) -> Response {
    let format = Format::negotiate(accept.and_then(|value| value.to_str().ok()));
    let body = match format {
        Format::OpenMetrics => openmetrics,
        Format::Text => to_text(&openmetrics),
    };
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// OpenMetrics 1.0 text as the Prometheus text format 0.0.4.
pub fn to_text(openmetrics: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|rest| rest.split_once(' ')) {
            types.insert(name, kind);
        }
    }
    // The name 0.0.4 gives a family in HELP and TYPE, and its type there.
    let described = |name: &str| -> (String, &'static str) {
        match types.get(name).copied().unwrap_or("untyped") {
            "counter" => (format!("{name}_total"), "counter"),
            "gauge" => (name.to_string(), "gauge"),
            "histogram" | "gaugehistogram" => (name.to_string(), "histogram"),
            "summary" => (name.to_string(), "summary"),
            "info" => (format!("{name}_info"), "gauge"),
            "stateset" => (name.to_string(), "gauge"),
            _ => (name.to_string(), "untyped"),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {text}\n", described(name).0));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(name, _)| name);
            let (name, kind) = described(name);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') {
            continue;
        } else {
            // A sample; an exemplar (` # {...}`) after it has no place in 0.0.4.
            out.push_str(without_exemplar(line));
            out.push('\n');
        }
    }
    out
}

/// `line` without a trailing exemplar: the first ` # ` outside quoted label values.
fn without_exemplar(line: &str) -> &str {
    let bytes = line.as_bytes();
    let (mut quoted, mut escaped) = (false, false);
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'#' if !quoted && i > 0 && bytes[i - 1] == b' ' => return line[..i - 1].trim_end(),
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP app_requests Requests served.
# TYPE app_requests counter
app_requests_total{route=\"/a # b\"} 3 # {trace=\"x\"} 1.0
# HELP app_up 1 when up.
# TYPE app_up gauge
app_up 1
# HELP app_latency_seconds Latency.
# TYPE app_latency_seconds histogram
# UNIT app_latency_seconds seconds
app_latency_seconds_sum 0.5
app_latency_seconds_count 2
app_latency_seconds_bucket{le=\"0.1\"} 1
app_latency_seconds_bucket{le=\"+Inf\"} 2
# EOF
";

    #[test]
    fn openmetrics_becomes_the_0_0_4_text() {
        assert_eq!(
            to_text(OPENMETRICS),
            "# HELP app_requests_total Requests served.
# TYPE app_requests_total counter
app_requests_total{route=\"/a # b\"} 3
# HELP app_up 1 when up.
# TYPE app_up gauge
app_up 1
# HELP app_latency_seconds Latency.
# TYPE app_latency_seconds histogram
app_latency_seconds_sum 0.5
app_latency_seconds_count 2
app_latency_seconds_bucket{le=\"0.1\"} 1
app_latency_seconds_bucket{le=\"+Inf\"} 2
"
        );
    }

    #[test]
    fn the_accept_header_chooses_the_format() {
        let cases = [
            (None, Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (Some("application/openmetrics-text; version=1.0.0; charset=utf-8"), Format::OpenMetrics),
            (Some("application/openmetrics-text;version=0.0.1"), Format::Text),
            (Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.9"), Format::Text),
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            (Some("text/plain;q=0,application/openmetrics-text"), Format::OpenMetrics),
            (Some("application/json"), Format::Text),
        ];
        for (accept, expected) in cases {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
    }
}
