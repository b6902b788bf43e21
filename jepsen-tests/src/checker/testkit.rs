//! A tiny history builder so checker tests read as timelines: each call adds
//! one operation (invoke at `t0`, completion at `t1`) on the current key and
//! node; `build` orders all events by time as the harness would record them.

use serde_json::{json, Value};

use crate::history::{Op, OpType};

pub(crate) enum End {
    Ok(Value, u64),
    Fail(u64),
    Info(u64),
    Pending,
}

pub(crate) struct Hist {
    key: String,
    node: u32,
    ops: Vec<Op>,
}

impl Hist {
    pub fn new() -> Self {
        Hist {
            key: "k".to_string(),
            node: 1,
            ops: Vec::new(),
        }
    }

    /// Following operations act on `key`.
    pub fn key(&mut self, key: &str) -> &mut Self {
        self.key = key.to_string();
        self
    }

    /// Following operations go through `node`.
    pub fn node(&mut self, node: u32) -> &mut Self {
        self.node = node;
        self
    }

    pub fn op(&mut self, process: u64, f: &str, value: Value, t0: u64, end: End) -> &mut Self {
        let mk = |kind, value, time, error: Option<&str>| Op {
            process,
            kind,
            f: f.to_string(),
            key: self.key.clone(),
            value,
            node: self.node,
            time,
            error: error.map(str::to_string),
        };
        let invoke = mk(OpType::Invoke, value.clone(), t0, None);
        let done = match end {
            End::Ok(v, t1) => Some(mk(OpType::Ok, v, t1, None)),
            End::Fail(t1) => Some(mk(OpType::Fail, value, t1, Some("refused"))),
            End::Info(t1) => Some(mk(OpType::Info, value, t1, Some("timeout"))),
            End::Pending => None,
        };
        self.ops.push(invoke);
        self.ops.extend(done);
        self
    }

    pub fn write(&mut self, p: u64, v: i64, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "write", json!(v), t0, End::Ok(json!(v), t1))
    }

    pub fn write_info(&mut self, p: u64, v: i64, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "write", json!(v), t0, End::Info(t1))
    }

    pub fn write_fail(&mut self, p: u64, v: i64, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "write", json!(v), t0, End::Fail(t1))
    }

    pub fn write_pending(&mut self, p: u64, v: i64, t0: u64) -> &mut Self {
        self.op(p, "write", json!(v), t0, End::Pending)
    }

    pub fn read(&mut self, p: u64, v: Option<i64>, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "read", Value::Null, t0, End::Ok(json!(v), t1))
    }

    /// An ok read carrying the revision it was served at.
    pub fn read_rev(&mut self, p: u64, rev: u64, v: Option<i64>, t0: u64, t1: u64) -> &mut Self {
        let got = json!({"revision": rev, "value": v});
        self.op(p, "read", Value::Null, t0, End::Ok(got, t1))
    }

    pub fn cas(&mut self, p: u64, e: Option<i64>, d: i64, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "cas", json!([e, d]), t0, End::Ok(json!([e, d]), t1))
    }

    pub fn cas_fail(&mut self, p: u64, e: Option<i64>, d: i64, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "cas", json!([e, d]), t0, End::Fail(t1))
    }

    pub fn cas_info(&mut self, p: u64, e: Option<i64>, d: i64, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "cas", json!([e, d]), t0, End::Info(t1))
    }

    pub fn add(&mut self, p: u64, e: i64, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "add", json!(e), t0, End::Ok(json!(e), t1))
    }

    pub fn add_fail(&mut self, p: u64, e: i64, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "add", json!(e), t0, End::Fail(t1))
    }

    pub fn add_info(&mut self, p: u64, e: i64, t0: u64, t1: u64) -> &mut Self {
        self.op(p, "add", json!(e), t0, End::Info(t1))
    }

    pub fn read_set(&mut self, p: u64, elems: &[i64], t0: u64, t1: u64) -> &mut Self {
        self.op(p, "read", Value::Null, t0, End::Ok(json!(elems), t1))
    }

    /// All events, ordered by time (stable, so an invoke stays before its
    /// completion at equal times).
    pub fn build(&self) -> Vec<Op> {
        let mut ops = self.ops.clone();
        ops.sort_by_key(|o| o.time);
        ops
    }
}
