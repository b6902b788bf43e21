//! The recorded history: one [`Op`] per line of `history.jsonl`, in the
//! order events happened. Every client operation appears twice: an
//! `invoke` when it is sent and a completion (`ok`, `fail` or `info`).

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;
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
    write_lines(path, ops)
}

pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Op>> {
    read_lines(path)
}

/// Writes one JSON value per line. Errors name the file.
pub fn write_lines<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let write = || -> anyhow::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for item in items {
            serde_json::to_writer(&mut f, item)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Reads one JSON value per line, skipping blank lines. Errors name the file
/// (and the line, for a line that does not parse): a user checking a
/// recording must be told which file is missing or unreadable.
pub fn read_lines<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64) -> Op {
        Op {
            process,
            kind: OpType::Invoke,
            f: "read".into(),
            key: "r0".into(),
            value: serde_json::Value::Null,
            node: 1,
            time: 5,
            error: None,
        }
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("history.jsonl");
        let ops = vec![op(1), op(2)];
        write_jsonl(&p, &ops).unwrap();
        assert_eq!(read_jsonl(&p).unwrap(), ops);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-run").join("history.jsonl");
        let e = format!("{:#}", read_jsonl(&missing).unwrap_err());
        assert!(e.contains(&missing.display().to_string()), "{e}");
        // Opens, but cannot be read as lines.
        let e = format!("{:#}", read_jsonl(dir.path()).unwrap_err());
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "\n{\"process\": 1}\n").unwrap();
        let e = format!("{:#}", read_jsonl(&bad).unwrap_err());
        assert!(e.contains(&format!("{}:2:", bad.display())), "{e}");
        let e = format!("{:#}", write_jsonl(&missing, &[op(1)]).unwrap_err());
        assert!(e.contains(&missing.display().to_string()), "{e}");
    }
}
