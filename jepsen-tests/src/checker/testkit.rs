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

    /// A watch-workload write of `value` on the current key; `Some(rev)`:
    /// acknowledged at that revision.
    pub fn watch_write(
        &mut self,
        p: u64,
        value: &str,
        rev: Option<u64>,
        t0: u64,
        t1: u64,
    ) -> &mut Self {
        let end = match rev {
            Some(r) => End::Ok(json!({"value": value, "revision": r}), t1),
            None => End::Info(t1),
        };
        self.op(p, super::watch::F_WRITE, json!(value), t0, end)
    }

    /// One watch session of watcher `p` from `from`: the lines received,
    /// and the revision of the server's final error line if it sent one.
    pub fn watch(
        &mut self,
        p: u64,
        from: u64,
        lines: Vec<Value>,
        end_revision: Option<u64>,
        t0: u64,
        t1: u64,
    ) -> &mut Self {
        let rec = super::watch::SessionRecord {
            from,
            lines,
            end: end_revision.map(|r| json!({"error": "no leader", "revision": r})),
            ..Default::default()
        };
        let done = End::Ok(serde_json::to_value(rec).expect("record"), t1);
        self.op(p, super::watch::F_WATCH, json!({ "from": from }), t0, done)
    }

    /// A watch from `from` refused with 410: the journal starts at `oldest`.
    pub fn watch_gone(&mut self, p: u64, from: u64, oldest: u64, t0: u64, t1: u64) -> &mut Self {
        let inv = json!({ "from": from });
        self.op(p, super::watch::F_WATCH, inv, t0, End::Fail(t1));
        let done = self.ops.last_mut().expect("just pushed");
        done.value = json!({"from": from, "status": 410, "oldest": oldest});
        self
    }

    /// All events, ordered by time (stable, so an invoke stays before its
    /// completion at equal times).
    pub fn build(&self) -> Vec<Op> {
        let mut ops = self.ops.clone();
        ops.sort_by_key(|o| o.time);
        ops
    }
}
