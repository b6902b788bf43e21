//! Faults on a seeded schedule: fault and heal periods alternate, and with
//! some probability two faults overlap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::Cluster;
use crate::history::NemesisEvent;
use crate::rng::Rng;
use crate::workload::{Http, Reply};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    Partition,
    Loss,
    Kill,
    Pause,
    Skew,
    Member,
}

impl Fault {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s.trim() {
            "partition" => Fault::Partition,
            "loss" => Fault::Loss,
            "kill" => Fault::Kill,
            "pause" => Fault::Pause,
            "skew" => Fault::Skew,
            "member" => Fault::Member,
            other => anyhow::bail!(
                "unknown nemesis {other:?} (partition, loss, kill, pause, skew, member)"
            ),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::Partition => "partition",
            Fault::Loss => "loss",
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Skew => "skew",
            Fault::Member => "member",
        }
    }
}

/// What must be undone to heal one active fault.
enum Active {
    Network,
    Killed(u32),
    Paused(u32),
    Skewed(u32),
    Removed(u32),
}

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    pub http: Http,
    pub faults: Vec<Fault>,
    pub rng: Rng,
    pub start: Instant,
    pub log: Arc<Mutex<Vec<NemesisEvent>>>,
}

impl Nemesis {
    fn record(&self, phase: &str, fault: Fault, detail: String) {
        tracing::info!("nemesis {phase} {}: {detail}", fault.name());
        self.log.lock().expect("log").push(NemesisEvent {
            time: self.start.elapsed().as_nanos() as u64,
            phase: phase.into(),
            fault: fault.name().into(),
            detail,
        });
    }

    /// The leader most running nodes agree on.
    pub async fn leader(&self) -> Option<u32> {
        let urls: Vec<String> = {
            let c = self.cluster.lock().expect("cluster");
            c.ids()
                .into_iter()
                .filter(|id| c.is_running(*id) && !c.is_paused(*id))
                .map(|id| c.url(id))
                .collect()
        };
        let mut votes: HashMap<u64, usize> = HashMap::new();
        for u in urls {
            if let Reply::Status(200, body) = self
                .http
                .call(reqwest::Method::GET, &format!("{u}/cluster"), None)
                .await
            {
                if let Some(l) = body["leader"].as_u64() {
                    *votes.entry(l).or_default() += 1;
                }
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(l, _)| l as u32)
    }

    /// Runs the schedule until `end`, then heals everything.
    pub async fn run(mut self, end: Instant) {
        // `--nemesis none`: nothing to deal (the deck would stay empty).
        if self.faults.is_empty() {
            return;
        }
        let mut active: Vec<(Fault, Active)> = Vec::new();
        let mut deck: Vec<Fault> = Vec::new();
        while Instant::now() < end {
            let heal_for = Duration::from_millis(self.rng.range(3_000, 6_000));
            tokio::time::sleep(heal_for.min(end.saturating_duration_since(Instant::now()))).await;
            if Instant::now() >= end {
                break;
            }
            // Faults are dealt from a shuffled deck, so every enabled fault
            // occurs once before any repeats; sometimes two overlap.
            let mut chosen = vec![self.deal(&mut deck)];
            if self.faults.len() > 1 && self.rng.chance(0.3) {
                let other = self.deal(&mut deck);
                if other != chosen[0] {
                    chosen.push(other);
                }
            }
            for f in chosen {
                match self.start_fault(f).await {
                    Ok(Some(a)) => active.push((f, a)),
                    Ok(None) => {}
                    Err(e) => self.record("error", f, e.to_string()),
                }
            }
            let fault_for = Duration::from_millis(self.rng.range(4_000, 8_000));
            tokio::time::sleep(fault_for.min(end.saturating_duration_since(Instant::now()))).await;
            while let Some((f, a)) = active.pop() {
                if let Err(e) = self.heal(f, a).await {
                    self.record("error", f, format!("heal: {e}"));
                }
            }
        }
        while let Some((f, a)) = active.pop() {
            let _ = self.heal(f, a).await;
        }
    }

    fn deal(&mut self, deck: &mut Vec<Fault>) -> Fault {
        if deck.is_empty() {
            *deck = self.faults.clone();
            let mut order: Vec<u32> = (0..deck.len() as u32).collect();
            shuffle(&mut self.rng, &mut order);
            *deck = order.into_iter().map(|i| self.faults[i as usize]).collect();
        }
        deck.pop().expect("refilled")
    }

    async fn pick_target(&mut self, prefer_leader: bool) -> u32 {
        let ids = self.cluster.lock().expect("cluster").ids();
        if prefer_leader && self.rng.chance(0.5) {
            if let Some(l) = self.leader().await {
                return l;
            }
        }
        *self.rng.pick(&ids)
    }

    async fn start_fault(&mut self, f: Fault) -> anyhow::Result<Option<Active>> {
        match f {
            Fault::Partition => {
                let ids = self.cluster.lock().expect("cluster").ids();
                let n = ids.len();
                let shape = self.rng.below(3);
                let leader = self.leader().await;
                let (a, b, bridge): (Vec<u32>, Vec<u32>, Option<u32>) = match shape {
                    // The leader in the minority.
                    0 if leader.is_some() => {
                        let l = leader.expect("checked");
                        let mut minority = vec![l];
                        let mut rest: Vec<u32> = ids.iter().copied().filter(|i| *i != l).collect();
                        while minority.len() < n.div_ceil(2) - 1 {
                            minority.push(rest.remove(self.rng.below(rest.len() as u64) as usize));
                        }
                        (minority, rest, None)
                    }
                    // A bridge node sees both halves, which do not see each other.
                    1 if n >= 3 => {
                        let mut s = ids.clone();
                        shuffle(&mut self.rng, &mut s);
                        let bridge = s.pop().expect("n >= 3");
                        let half = s.len() / 2;
                        (s[..half].to_vec(), s[half..].to_vec(), Some(bridge))
                    }
                    // Random halves.
                    _ => {
                        let mut s = ids.clone();
                        shuffle(&mut self.rng, &mut s);
                        let cut = 1 + self.rng.below((n - 1) as u64) as usize;
                        (s[..cut].to_vec(), s[cut..].to_vec(), None)
                    }
                };
                {
                    let c = self.cluster.lock().expect("cluster");
                    for &x in &a {
                        for &y in &b {
                            c.topo.block(x, y)?;
                            c.topo.block(y, x)?;
                        }
                    }
                }
                let detail = match bridge {
                    Some(br) => format!("{a:?} | {b:?} bridged by {br}"),
                    None => format!("{a:?} | {b:?} (leader was {leader:?})"),
                };
                self.record("start", f, detail);
                Ok(Some(Active::Network))
            }
            Fault::Loss => {
                let ids = self.cluster.lock().expect("cluster").ids();
                let target = *self.rng.pick(&ids);
                let p = 0.2 + self.rng.below(30) as f64 / 100.0;
                let peers: Vec<u32> = ids.iter().copied().filter(|i| *i != target).collect();
                self.cluster
                    .lock()
                    .expect("cluster")
                    .topo
                    .lossy(target, &peers, p)?;
                self.record(
                    "start",
                    f,
                    format!("node {target} drops {:.0}% from peers", p * 100.0),
                );
                Ok(Some(Active::Network))
            }
            Fault::Kill => {
                let t = self.pick_target(true).await;
                let mut c = self.cluster.lock().expect("cluster");
                if !c.is_running(t) {
                    return Ok(None);
                }
                c.kill(t);
                drop(c);
                self.record("start", f, format!("kill -9 node {t}"));
                Ok(Some(Active::Killed(t)))
            }
            Fault::Pause => {
                let t = self.pick_target(true).await;
                let mut c = self.cluster.lock().expect("cluster");
                if !c.is_running(t) || c.is_paused(t) {
                    return Ok(None);
                }
                c.pause(t);
                drop(c);
                self.record("start", f, format!("SIGSTOP node {t}"));
                Ok(Some(Active::Paused(t)))
            }
            Fault::Skew => {
                let t = self.pick_target(false).await;
                let secs =
                    self.rng.range(30, 300) as i64 * if self.rng.chance(0.5) { 1 } else { -1 };
                let mut c = self.cluster.lock().expect("cluster");
                if !c.is_running(t) || c.is_paused(t) {
                    return Ok(None);
                }
                c.kill(t);
                c.start(t, Some(secs))?;
                drop(c);
                self.record(
                    "start",
                    f,
                    format!("node {t} restarted with clock {secs:+}s"),
                );
                Ok(Some(Active::Skewed(t)))
            }
            Fault::Member => {
                let t = self.pick_target(false).await;
                let ids = self.cluster.lock().expect("cluster").ids();
                let voters: Vec<u32> = ids.into_iter().filter(|i| *i != t).collect();
                self.change_membership(&voters).await?;
                self.record("start", f, format!("removed node {t}; voters {voters:?}"));
                Ok(Some(Active::Removed(t)))
            }
        }
    }

    /// Sends an admin request to live nodes in turn; any node forwards it
    /// to the leader, so the first one that answers decides.
    async fn admin(&self, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let urls: Vec<String> = {
            let c = self.cluster.lock().expect("cluster");
            c.ids()
                .into_iter()
                .filter(|id| c.is_running(*id) && !c.is_paused(*id))
                .map(|id| c.url(id))
                .collect()
        };
        let mut last = String::from("no live node");
        for u in urls {
            match self
                .http
                .call(
                    reqwest::Method::POST,
                    &format!("{u}{path}"),
                    Some(body.clone()),
                )
                .await
            {
                Reply::Status(200, _) => return Ok(()),
                Reply::Status(s, b) => last = format!("{u}: {s} {b}"),
                Reply::NotSent(e) | Reply::Lost(e) => last = format!("{u}: {e}"),
            }
        }
        anyhow::bail!("{path} {body}: {last}")
    }

    async fn change_membership(&self, voters: &[u32]) -> anyhow::Result<()> {
        self.admin("/cluster/change-membership", json!({ "voters": voters }))
            .await
    }

    /// Adds `id` back as learner, then as voter.
    pub async fn readd(&self, id: u32) -> anyhow::Result<()> {
        let (grpc, http, ids) = {
            let c = self.cluster.lock().expect("cluster");
            (c.grpc_addr(id), c.http_addr(id), c.ids())
        };
        self.admin(
            "/cluster/add-learner",
            json!({"node_id": id, "grpc_addr": grpc, "http_addr": http}),
        )
        .await?;
        self.change_membership(&ids).await
    }

    async fn heal(&mut self, f: Fault, a: Active) -> anyhow::Result<()> {
        match a {
            Active::Network => {
                self.cluster.lock().expect("cluster").topo.heal()?;
                self.record("stop", f, "iptables flushed".into());
            }
            Active::Killed(t) => {
                self.cluster.lock().expect("cluster").start(t, None)?;
                self.record("stop", f, format!("restarted node {t}"));
            }
            Active::Paused(t) => {
                self.cluster.lock().expect("cluster").resume(t);
                self.record("stop", f, format!("SIGCONT node {t}"));
            }
            Active::Skewed(t) => {
                let mut c = self.cluster.lock().expect("cluster");
                c.kill(t);
                c.start(t, None)?;
                drop(c);
                self.record("stop", f, format!("node {t} restarted with true clock"));
            }
            Active::Removed(t) => {
                let r = self.readd(t).await;
                self.record("stop", f, format!("re-added node {t}: {r:?}"));
                r?;
            }
        }
        Ok(())
    }
}

fn shuffle(rng: &mut Rng, v: &mut [u32]) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}
