//! A spec's text read into a document for the walk, keeping what a plain `serde_json::Value`
//! would lose without a word.
//!
//! A `Value` map keeps one value per key, so `name: a` followed by `name: b` would quietly run
//! job `b`; and it holds no number past 64 bits, no infinity and no NaN. The reader here builds
//! the `Value` itself, through serde's visitor, and reports each duplicate key and each number
//! it cannot hold as a problem with its path, then goes on, so that the walk still reports every
//! other problem of the document in the same run. Messages name the format read (JSON or YAML).

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::Deserializer;
use serde::de::DeserializeSeed;
use serde::de::MapAccess;
use serde::de::SeqAccess;
use serde::de::Visitor;
use serde_json::Map;
use serde_json::Number;
use serde_json::Value;

use super::SpecErrors;
use super::SpecProblem;
use super::path::join;
use super::path::printable;

/// The two formats a spec is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

impl Format {
    /// JSON when the text's first non-blank character is `{`, YAML otherwise.
    fn of(text: &str) -> Format {
        if text.trim_start().starts_with('{') { Format::Json } else { Format::Yaml }
    }

    fn as_str(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A spec document: its value, and what the reader refused in it (duplicate keys, numbers no
/// value holds). Deserializing one (as the gateway does with a submission's `spec`) reads JSON.
#[derive(Clone, Debug, Default)]
pub struct Document {
    pub value: Value,
    /// Problems found while reading, in document order.
    pub problems: Vec<SpecProblem>,
    /// Paths whose value was refused and stands as `null` in `value`: the walk's complaints
    /// about those `null`s would only repeat the reader's.
    pub(super) replaced: BTreeSet<String>,
}

impl Document {
    /// A document that was read elsewhere (nothing refused).
    pub fn from_value(value: Value) -> Document {
        Document { value, ..Document::default() }
    }
}

/// Read a spec's text, JSON or YAML by its first character. Only text that is not JSON or YAML
/// at all is an error here; what the reader refuses is in [`Document::problems`].
pub fn read(text: &str) -> Result<Document, SpecErrors> {
    let format = Format::of(text);
    let mut found = Found::default();
    let node = Node { path: String::new(), format, found: &mut found };
    let value = match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            node.deserialize(&mut de).and_then(|value| de.end().map(|()| value)).map_err(|e| e.to_string())
        }
        Format::Yaml => node.deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(|e| e.to_string()),
    };
    match value {
        Ok(value) => Ok(Document { value, problems: found.problems, replaced: found.replaced }),
        Err(e) => Err(SpecErrors(vec![SpecProblem {
            path: String::new(),
            message: format!("not valid {format}: {}", printable(&e)),
        }])),
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Document, D::Error> {
        let mut found = Found::default();
        let value = Node { path: String::new(), format: Format::Json, found: &mut found }.deserialize(d)?;
        Ok(Document { value, problems: found.problems, replaced: found.replaced })
    }
}

#[derive(Default)]
struct Found {
    problems: Vec<SpecProblem>,
    replaced: BTreeSet<String>,
}

impl Found {
    /// Refuse the value at `path`: it stands as `null` from here on.
    fn refuse(&mut self, path: &str, message: String) -> Value {
        self.problems.push(SpecProblem { path: path.to_string(), message });
        self.replaced.insert(path.to_string());
        Value::Null
    }
}

/// One value of the document, at `path`.
struct Node<'f> {
    path: String,
    format: Format,
    found: &'f mut Found,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value (a map, list, string, number, boolean or null)", self.format)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(v) => Ok(Value::Number(v.into())),
            Err(_) => Ok(self.found.refuse(&self.path, out_of_range(v))),
        }
    }

    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        match u64::try_from(v) {
            Ok(v) => Ok(Value::Number(v.into())),
            Err(_) => Ok(self.found.refuse(&self.path, out_of_range(v))),
        }
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        match Number::from_f64(v) {
            Some(n) => Ok(Value::Number(n)),
            None => {
                let shown = match (v.is_nan(), self.format) {
                    (true, Format::Yaml) => ".nan",
                    (false, Format::Yaml) if v > 0.0 => ".inf",
                    (false, Format::Yaml) => "-.inf",
                    (true, Format::Json) => "NaN",
                    (false, Format::Json) => "an infinite number",
                };
                Ok(self.found.refuse(&self.path, format!("{shown} is not a finite number")))
            }
        }
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            match seq.next_element_seed(Node { path, format: self.format, found: &mut *self.found })? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, &key);
            if out.contains_key(&key) {
                // The first stays; the later one is still read, so what is wrong inside it is
                // reported too.
                let message = format!("duplicate key {key:?}");
                self.found.problems.push(SpecProblem { path: path.clone(), message });
                map.next_value_seed(Node { path, format: self.format, found: &mut *self.found })?;
            } else {
                let value = map.next_value_seed(Node { path, format: self.format, found: &mut *self.found })?;
                out.insert(key, value);
            }
        }
        Ok(Value::Object(out))
    }
}

fn out_of_range(v: impl fmt::Display) -> String {
    format!("{v} is out of range: whole numbers here are 64-bit ({} to {})", i64::MIN, u64::MAX)
}
