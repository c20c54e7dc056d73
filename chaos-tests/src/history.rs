//! What happened during a run: every client operation with its invocation and outcome, and
//! every fault with when it began and healed. Times are milliseconds since the run started and
//! wall-clock instants (to line up with the processes' logs).

use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;
use time::OffsetDateTime;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: it must be visible from now on.
    Ok,
    /// Refused before it could take effect: it must never be visible.
    Failed(String),
    /// Timed out or cut off: it may or may not have taken effect.
    Unknown(String),
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// `PUT /v1/annotations/{key}` through a replica of `cluster`.
    Annotate { cluster: String, via: String, key: String, value: String },
    /// A pipeline submitted to the gateway; `pipeline` is its id when acknowledged.
    Submit { name: String, pipeline: Option<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub kind: OpKind,
    pub invoked_ms: u64,
    pub completed_ms: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A fault's life: injected, then healed (or left to the end of the run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultEvent {
    pub fault: String,
    pub target: String,
    pub injected_ms: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub injected_at: OffsetDateTime,
    pub healed_ms: Option<u64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub healed_at: Option<OffsetDateTime>,
    /// The leader's term when the fault began, for faults aimed at a leader.
    pub term_before: Option<u64>,
    pub cluster: Option<String>,
}

pub struct History {
    started: Instant,
    ops: Mutex<Vec<Op>>,
    faults: Mutex<Vec<FaultEvent>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        Self { started: Instant::now(), ops: Mutex::new(Vec::new()), faults: Mutex::new(Vec::new()) }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn record(&self, kind: OpKind, invoked_ms: u64, outcome: Outcome) {
        let op = Op { kind, invoked_ms, completed_ms: self.now_ms(), outcome };
        self.ops.lock().expect("history lock").push(op);
    }

    /// Note a fault beginning; returns its index for [`History::healed`].
    pub fn injected(&self, fault: &str, target: &str, cluster: Option<&str>, term_before: Option<u64>) -> usize {
        let mut faults = self.faults.lock().expect("history lock");
        faults.push(FaultEvent {
            fault: fault.to_string(),
            target: target.to_string(),
            injected_ms: self.now_ms(),
            injected_at: OffsetDateTime::now_utc(),
            healed_ms: None,
            healed_at: None,
            term_before,
            cluster: cluster.map(str::to_string),
        });
        eprintln!("chaos: +{} ms inject {fault} on {target}", self.now_ms());
        faults.len() - 1
    }

    pub fn healed(&self, index: usize) {
        let now = self.now_ms();
        if let Some(event) = self.faults.lock().expect("history lock").get_mut(index) {
            event.healed_ms = Some(now);
            event.healed_at = Some(OffsetDateTime::now_utc());
            eprintln!("chaos: +{now} ms heal {} on {}", event.fault, event.target);
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("history lock").clone()
    }

    pub fn faults(&self) -> Vec<FaultEvent> {
        self.faults.lock().expect("history lock").clone()
    }

    /// (ok, failed, unknown) counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        let ops = self.ops.lock().expect("history lock");
        let ok = ops.iter().filter(|o| o.outcome == Outcome::Ok).count();
        let failed = ops.iter().filter(|o| matches!(o.outcome, Outcome::Failed(_))).count();
        (ok, failed, ops.len() - ok - failed)
    }

    /// One JSON object per line: the faults, then the operations.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for fault in self.faults() {
            out.push_str(&serde_json::json!({"fault": fault}).to_string());
            out.push('\n');
        }
        for op in self.ops() {
            out.push_str(&serde_json::to_string(&op).unwrap_or_default());
            out.push('\n');
        }
        out
    }
}
