//! The test network: one private bridge and one network namespace per node,
//! each with its own address. Everything made here is removed by
//! [`Topology::teardown`] (also called on drop).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

/// A command that must succeed.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command whose failure only matters to the log (cleanup).
fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

/// Why this machine cannot host the topology, if it cannot.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok();
    let root = uid.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("must run as root (network namespaces, iptables)".into());
    }
    for tool in ["ip", "iptables"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!(
                "`{tool}` is not installed (apt-get install iproute2 iptables)"
            ));
        }
    }
    let probe = format!("rmjprobe{}", std::process::id() % 100_000);
    if sh(&["ip", "netns", "add", &probe]).is_err() {
        return Some("cannot create network namespaces here".into());
    }
    sh_quiet(&["ip", "netns", "del", &probe]);
    None
}

pub struct Topology {
    /// Short per-run tag keeping names unique (interface names ≤ 15 chars).
    tag: String,
    pub bridge: String,
    pub host_ip: Ipv4Addr,
    pub nodes: Vec<NodeNet>,
    torn_down: bool,
}

pub struct NodeNet {
    /// 1-based node id.
    pub id: u32,
    pub netns: String,
    pub ip: Ipv4Addr,
    veth_host: String,
}

impl Topology {
    /// Builds the bridge 10.<a>.<b>.1/24 and namespaces with .11, .12, ….
    /// The subnet is derived from the pid so parallel runs do not collide.
    pub fn create(n: u32) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let tag = format!("{:x}", pid % 0xfffff);
        let (a, b) = (200 + (pid % 50) as u8, ((pid / 50) % 250) as u8);
        let host_ip = Ipv4Addr::new(10, a, b, 1);
        let mut topo = Topology {
            bridge: format!("rmj{tag}br"),
            tag,
            host_ip,
            nodes: Vec::new(),
            torn_down: false,
        };
        topo.build(n, a, b).inspect_err(|_| topo.teardown())?;
        Ok(topo)
    }

    fn build(&mut self, n: u32, a: u8, b: u8) -> anyhow::Result<()> {
        let br = self.bridge.clone();
        sh(&["ip", "link", "add", &br, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.host_ip),
            "dev",
            &br,
        ])?;
        sh(&["ip", "link", "set", &br, "up"])?;
        for id in 1..=n {
            let netns = format!("rmj{}n{id}", self.tag);
            let veth_host = format!("rmj{}v{id}", self.tag);
            let veth_ns = format!("rmj{}p{id}", self.tag);
            let ip = Ipv4Addr::new(10, a, b, 10 + id as u8);
            sh(&["ip", "netns", "add", &netns])?;
            self.nodes.push(NodeNet {
                id,
                netns: netns.clone(),
                ip,
                veth_host: veth_host.clone(),
            });
            sh(&[
                "ip", "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_ns,
            ])?;
            sh(&["ip", "link", "set", &veth_ns, "netns", &netns])?;
            sh(&["ip", "link", "set", &veth_host, "master", &br])?;
            sh(&["ip", "link", "set", &veth_host, "up"])?;
            let ns = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", netns.as_str()];
                full.extend_from_slice(args);
                sh(&full)
            };
            ns(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &veth_ns])?;
            ns(&["ip", "link", "set", &veth_ns, "up"])?;
            ns(&["ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    pub fn node(&self, id: u32) -> &NodeNet {
        &self.nodes[(id - 1) as usize]
    }

    /// Runs iptables inside a node's namespace.
    pub fn iptables(&self, id: u32, rule: &[&str]) -> anyhow::Result<()> {
        let mut full = vec![
            "ip",
            "netns",
            "exec",
            self.node(id).netns.as_str(),
            "iptables",
        ];
        full.extend_from_slice(rule);
        sh(&full).map(|_| ())
    }

    /// Drops all traffic between node `id` and node `peer` (both directions,
    /// enforced on `id`'s side). Client traffic from the host is untouched.
    pub fn block(&self, id: u32, peer: u32) -> anyhow::Result<()> {
        let ip = self.node(peer).ip.to_string();
        self.iptables(id, &["-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
        self.iptables(id, &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"])
    }

    /// Drops a random fraction of packets from other nodes to `id`.
    pub fn lossy(&self, id: u32, peers: &[u32], probability: f64) -> anyhow::Result<()> {
        for &p in peers {
            let ip = self.node(p).ip.to_string();
            self.iptables(
                id,
                &[
                    "-A",
                    "INPUT",
                    "-s",
                    &ip,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &format!("{probability:.2}"),
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Removes every rule in every namespace.
    pub fn heal(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            self.iptables(n.id, &["-F"])?;
        }
        Ok(())
    }

    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for n in &self.nodes {
            sh_quiet(&["ip", "netns", "pids", &n.netns]);
            if let Ok(pids) = sh(&["ip", "netns", "pids", &n.netns]) {
                for pid in pids.split_whitespace() {
                    sh_quiet(&["kill", "-CONT", pid]);
                    sh_quiet(&["kill", "-KILL", pid]);
                }
            }
            sh_quiet(&["ip", "link", "del", &n.veth_host]);
            sh_quiet(&["ip", "netns", "del", &n.netns]);
        }
        sh_quiet(&["ip", "link", "del", &self.bridge]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}
