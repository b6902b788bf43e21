//! The recorded history: one [`Op`] per line of `history.jsonl`, in the
//! order events happened. Every client operation appears twice: an
//! `invoke` when it is sent and a completion (`ok`, `fail` or `info`).

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What became of an operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// Sent (or about to be sent).
    Invoke,
    /// Certainly happened, with this result.
    Ok,
    /// Certainly did not happen (refused before sending, CAS mismatch, a
    /// read that failed).
    Fail,
    /// Unknown: may or may not have happened, at any time after invoke.
    Info,
}

/// One event of the history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Op {
    /// Logical client; a process that got `info` is retired and replaced by
    /// a new process id, so each process has at most one op in flight.
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    /// `read`, `write`, `cas` (register workload); `add`, `read` (set).
    pub f: String,
    pub key: String,
    /// write: the value written; cas: `[expected, desired]`; read: the value
    /// read on `ok` (null on invoke); set add: the element; set read: the array.
    pub value: serde_json::Value,
    /// Node (1-based) the client talked to.
    pub node: u32,
    /// Monotonic nanoseconds since the run started.
    pub time: u64,
    /// Why an op failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn write_jsonl(path: &Path, ops: &[Op]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut f, op)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(())
}

pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Op>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for (i, line) in f.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// One line of `nemesis.jsonl`: a fault starting or healing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NemesisEvent {
    /// Monotonic nanoseconds since the run started (same clock as [`Op::time`]).
    pub time: u64,
    /// `start` or `stop`.
    pub phase: String,
    /// `partition`, `loss`, `kill`, `pause`, `skew`, `member`.
    pub fault: String,
    /// Human-readable: which nodes, which shape.
    pub detail: String,
}
