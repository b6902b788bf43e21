//! Node configuration: embedded defaults, an optional TOML file, then
//! `RAFTMESH_*` environment variables and flags (clap merges the last two).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use crate::error::NodeError;

/// Returns a configuration error naming the setting.
macro_rules! bail {
    ($($t:tt)*) => { return Err(NodeError::Config(format!($($t)*))) };
}

/// Everything a node needs to run. Each field says why it exists by its doc.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's Raft id; unique and stable for the node's lifetime.
    pub node_id: u64,
    /// RocksDB directory for the log and the state machine.
    pub data_dir: PathBuf,
    /// Where the HTTP gateway listens.
    pub http_addr: String,
    /// Where the inter-node gRPC service listens.
    pub grpc_addr: String,
    /// The gRPC address peers should dial, when it differs from the bind
    /// address (containers, StatefulSets).
    pub advertise_grpc: Option<String>,
    /// The HTTP address clients should use, advertised in membership.
    pub advertise_http: Option<String>,
    /// The rstmdb address clients should use, advertised in membership.
    pub advertise_rstmdb: Option<String>,
    /// Initial cluster: `ID=HOST:PORT` gRPC addresses, this node included.
    /// Empty means a single self-initialized node.
    pub peers: Vec<String>,
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Election timeout range; a follower that hears no leader for a random
    /// time in it starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries were applied since the last.
    pub snapshot_logs: u64,
    /// Log entries kept behind the snapshot before purging, so a briefly
    /// lagging follower catches up from the log rather than a snapshot.
    pub keep_logs: u64,
    /// Bytes per message of a snapshot sent to a lagging follower.
    pub snapshot_chunk_bytes: usize,
    /// Largest pm3 key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes of compact JSON.
    pub max_value_bytes: usize,
    /// How long a write waits for its commit before answering "outcome unknown".
    pub write_timeout_ms: u64,
    /// How long a request waits for a leader to exist before answering 503.
    pub leader_wait_ms: u64,
    /// Writes the leader holds waiting to be proposed; more are refused
    /// (503, nothing applied) instead of queueing without bound.
    pub max_pending_writes: usize,
    /// Largest log entry, encoded; a single larger command is refused (413)
    /// before it is proposed, and packed entries stop growing at it.
    pub max_entry_bytes: usize,
    /// Most keys one `GET /kv` answers.
    pub max_list_keys: usize,
    /// Applied runs the feed's live buffer holds; a watcher that falls this
    /// far behind is ended as lagged (it resumes from where it was).
    pub feed_buffer: usize,
    /// Where rstmdb's TCP wire listens.
    pub rstmdb_addr: String,
    /// SHA-256 hex digests of the rstmdb bearer tokens; when any are set
    /// (here or in `rstmdb_token_file`), rstmdb clients must AUTH.
    pub rstmdb_token_hashes: Vec<String>,
    /// A file of token digests, one per line (`#` comments, blank lines).
    pub rstmdb_token_file: Option<PathBuf>,
    /// Largest rstmdb frame payload.
    pub rstmdb_max_frame_bytes: usize,
    /// Where DriftDB clients reach this node (`socket_url`, `http_url`
    /// are built on it); unset: from the request's Host and scheme.
    pub drift_public_url: Option<String>,
    /// Messages queued for one room socket; a socket this far behind is
    /// closed with a reason.
    pub drift_socket_queue: usize,
    /// The feature version this node advertises. For upgrade testing only:
    /// a lower value makes the node pose as an older release, so the
    /// leader's version gate can be exercised without old binaries.
    pub advertised_version: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("./raftmesh-data"),
            http_addr: "127.0.0.1:8080".into(),
            grpc_addr: "127.0.0.1:7080".into(),
            advertise_grpc: None,
            advertise_http: None,
            advertise_rstmdb: None,
            peers: Vec::new(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs: 10_000,
            keep_logs: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            write_timeout_ms: 5_000,
            leader_wait_ms: 3_000,
            max_pending_writes: 10_000,
            max_entry_bytes: 8 << 20,
            max_list_keys: 10_000,
            feed_buffer: 1024,
            rstmdb_addr: "127.0.0.1:7401".into(),
            rstmdb_token_hashes: Vec::new(),
            rstmdb_token_file: None,
            rstmdb_max_frame_bytes: 16 << 20,
            drift_public_url: None,
            drift_socket_queue: 4096,
            advertised_version: raftmesh_proto::FEATURE_VERSION,
        }
    }
}

impl Config {
    /// The rstmdb token digests: the configured ones and the file's,
    /// lowercased (clients' digests are compared as lowercase hex). `None`
    /// when there are none: auth is not required.
    pub fn rstmdb_tokens(&self) -> Result<Option<std::collections::HashSet<String>>, NodeError> {
        let mut all: Vec<String> = self.rstmdb_token_hashes.clone();
        if let Some(path) = &self.rstmdb_token_file {
            let text = std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?;
            all.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        for h in &all {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("rstmdb token hash {h:?} is not 64 hex digits (a SHA-256 digest)");
            }
        }
        Ok((!all.is_empty()).then(|| all.iter().map(|h| h.to_ascii_lowercase()).collect()))
    }

    /// Rejects configurations that would run but misbehave.
    pub fn validate(&self) -> Result<(), NodeError> {
        if self.node_id == 0 {
            bail!("node-id must be > 0 (0 means \"no leader\" on the wire)");
        }
        if self.heartbeat_ms == 0 || self.election_timeout_min_ms <= self.heartbeat_ms {
            bail!("election-timeout-min-ms must be greater than heartbeat-ms (> 0)");
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            bail!("election-timeout-max-ms must be greater than election-timeout-min-ms");
        }
        if self.snapshot_logs == 0 {
            bail!("snapshot-logs must be > 0");
        }
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes > crate::network::MAX_MESSAGE_BYTES / 2
        {
            bail!(
                "snapshot-chunk-bytes must be > 0 and at most {} (half an inter-node message)",
                crate::network::MAX_MESSAGE_BYTES / 2
            );
        }
        if self.max_key_bytes == 0 || self.max_value_bytes == 0 {
            bail!("max-key-bytes and max-value-bytes must be > 0");
        }
        if self.write_timeout_ms == 0 || self.leader_wait_ms == 0 {
            bail!("write-timeout-ms and leader-wait-ms must be > 0");
        }
        if self.max_pending_writes == 0 || self.max_list_keys == 0 || self.feed_buffer == 0 {
            bail!("max-pending-writes, max-list-keys and feed-buffer must be > 0");
        }
        if self.drift_socket_queue == 0 {
            bail!("drift-socket-queue must be at least 1");
        }
        if let Some(u) = &self.drift_public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                bail!("drift-public-url must start with http:// or https:// (got {u:?})");
            }
        }
        if self.rstmdb_max_frame_bytes < 1024 {
            bail!("rstmdb-max-frame-bytes must be at least 1024");
        }
        for h in &self.rstmdb_token_hashes {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("rstmdb token hash {h:?} is not 64 hex digits (a SHA-256 digest)");
            }
        }
        if self.max_entry_bytes < self.max_value_bytes {
            bail!(
                "max-entry-bytes ({}) must be at least max-value-bytes ({}): a value must fit in an entry",
                self.max_entry_bytes,
                self.max_value_bytes
            );
        }
        if self.max_entry_bytes > crate::network::MAX_MESSAGE_BYTES {
            bail!(
                "max-entry-bytes may be at most {} (one inter-node message)",
                crate::network::MAX_MESSAGE_BYTES
            );
        }
        // More than the build supports would let a leader propose entries
        // this node cannot decode.
        if !(1..=raftmesh_proto::FEATURE_VERSION).contains(&self.advertised_version) {
            bail!(
                "advertised-version must be between 1 and {} (this build's feature version)",
                raftmesh_proto::FEATURE_VERSION
            );
        }
        let peers = self.peer_map()?;
        if !peers.is_empty() && !peers.contains_key(&self.node_id) {
            bail!(
                "--peer lists ids {:?} but not this node's id {}",
                peers.keys().collect::<Vec<_>>(),
                self.node_id
            );
        }
        Ok(())
    }

    /// Parsed `--peer` list, id → gRPC address.
    pub fn peer_map(&self) -> Result<BTreeMap<u64, String>, NodeError> {
        let mut out = BTreeMap::new();
        for p in &self.peers {
            let Some((id, addr)) = p.split_once('=') else {
                bail!("peer {p:?} is not ID=HOST:PORT");
            };
            let Ok(id) = id.trim().parse::<u64>() else {
                bail!("peer {p:?}: id is not a number");
            };
            if addr.trim().is_empty() || !addr.contains(':') {
                bail!("peer {p:?}: address must be HOST:PORT");
            }
            if out.insert(id, addr.trim().to_string()).is_some() {
                bail!("peer id {id} listed twice");
            }
        }
        Ok(out)
    }

    pub fn grpc_advertised(&self) -> String {
        self.advertise_grpc
            .clone()
            .unwrap_or_else(|| self.grpc_addr.clone())
    }

    pub fn http_advertised(&self) -> String {
        self.advertise_http
            .clone()
            .unwrap_or_else(|| self.http_addr.clone())
    }

    pub fn rstmdb_advertised(&self) -> String {
        self.advertise_rstmdb
            .clone()
            .unwrap_or_else(|| self.rstmdb_addr.clone())
    }
}

/// `raftmesh serve` flags. Every flag is optional so that an unset flag
/// leaves the file's or the default value in place; the defaults in the help
/// texts are those of [`Config::default`] (a test keeps them in step).
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys, e.g.
    /// `node_id = 2`); flags and RAFTMESH_* variables override it.
    #[arg(long, env = "RAFTMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's Raft id (> 0), unique in the cluster and stable for the
    /// life of its data dir. [default: 1]
    #[arg(long, env = "RAFTMESH_NODE_ID")]
    pub node_id: Option<u64>,
    /// Directory for the Raft log, the state machine and the node's
    /// identity; it belongs to one node of one cluster. [default: ./raftmesh-data]
    #[arg(long, env = "RAFTMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the HTTP gateway (pm3 API, /cluster, /metrics) listens on.
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "RAFTMESH_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Address the inter-node gRPC service listens on. [default: 127.0.0.1:7080]
    #[arg(long, env = "RAFTMESH_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// gRPC address other nodes dial, when it differs from --grpc-addr
    /// (containers, StatefulSets). [default: the --grpc-addr]
    #[arg(long, env = "RAFTMESH_ADVERTISE_GRPC")]
    pub advertise_grpc: Option<String>,
    /// HTTP address clients are told to use for this node.
    /// [default: the --http-addr]
    #[arg(long, env = "RAFTMESH_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    /// rstmdb address clients are told to use for this node (INFO,
    /// /cluster, /peers). [default: the --rstmdb-addr]
    #[arg(long, env = "RAFTMESH_ADVERTISE_RSTMDB")]
    pub advertise_rstmdb: Option<String>,
    /// ID=HOST:PORT of a cluster member's gRPC address; repeat per member,
    /// this node included. In the environment: RAFTMESH_PEERS,
    /// comma-separated. [default: none: a single self-initialized node]
    #[arg(long = "peer", env = "RAFTMESH_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Leader heartbeat period, in milliseconds. [default: 100]
    #[arg(long, env = "RAFTMESH_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// A follower that hears no leader for a random time between the min
    /// and max election timeout starts an election (ms). [default: 500]
    #[arg(long, env = "RAFTMESH_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper end of the election timeout range (ms). [default: 1000]
    #[arg(long, env = "RAFTMESH_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot after this many entries were applied since the last
    /// one. [default: 10000]
    #[arg(long, env = "RAFTMESH_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// Log entries kept behind a snapshot before purging, so a briefly
    /// lagging follower catches up from the log. [default: 1000]
    #[arg(long, env = "RAFTMESH_KEEP_LOGS")]
    pub keep_logs: Option<u64>,
    /// Bytes per message when streaming a snapshot to a lagging follower.
    /// [default: 1048576]
    #[arg(long, env = "RAFTMESH_SNAPSHOT_CHUNK_BYTES")]
    pub snapshot_chunk_bytes: Option<usize>,
    /// Longest pm3 key, in bytes. [default: 1024]
    #[arg(long, env = "RAFTMESH_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Largest stored value, in bytes of compact JSON. [default: 1048576]
    #[arg(long, env = "RAFTMESH_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// How long a write waits for its commit before answering "outcome
    /// unknown" (504), in ms. [default: 5000]
    #[arg(long, env = "RAFTMESH_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// How long a request waits for a leader to exist before answering 503,
    /// in ms. [default: 3000]
    #[arg(long, env = "RAFTMESH_LEADER_WAIT_MS")]
    pub leader_wait_ms: Option<u64>,
    /// Writes the leader holds waiting to be proposed; more are answered
    /// 503 (nothing applied). [default: 10000]
    #[arg(long, env = "RAFTMESH_MAX_PENDING_WRITES")]
    pub max_pending_writes: Option<usize>,
    /// Largest encoded log entry; a single larger command is answered 413
    /// before it is proposed. [default: 8388608]
    #[arg(long, env = "RAFTMESH_MAX_ENTRY_BYTES")]
    pub max_entry_bytes: Option<usize>,
    /// Most keys one `GET /kv` answers (continue with `?after=`). [default: 10000]
    #[arg(long, env = "RAFTMESH_MAX_LIST_KEYS")]
    pub max_list_keys: Option<usize>,
    /// Applied runs a node buffers for live watchers; a watcher further
    /// behind is ended with a "lagged" line and resumes. [default: 1024]
    #[arg(long, env = "RAFTMESH_FEED_BUFFER")]
    pub feed_buffer: Option<usize>,
    /// Address rstmdb's TCP wire listens on. [default: 127.0.0.1:7401]
    #[arg(long, env = "RAFTMESH_RSTMDB_ADDR")]
    pub rstmdb_addr: Option<String>,
    /// SHA-256 hex digest of an accepted rstmdb bearer token (repeatable,
    /// or comma-separated in the env); any set means clients must AUTH.
    /// [default: none]
    #[arg(
        long = "rstmdb-token-hash",
        env = "RAFTMESH_RSTMDB_TOKEN_HASHES",
        value_delimiter = ','
    )]
    pub rstmdb_token_hashes: Vec<String>,
    /// File of rstmdb token digests, one per line. [default: none]
    #[arg(long, env = "RAFTMESH_RSTMDB_TOKEN_FILE")]
    pub rstmdb_token_file: Option<PathBuf>,
    /// Largest rstmdb frame payload, bytes. [default: 16777216]
    #[arg(long, env = "RAFTMESH_RSTMDB_MAX_FRAME_BYTES")]
    pub rstmdb_max_frame_bytes: Option<usize>,
    /// Public base URL of this node for DriftDB clients, e.g.
    /// https://example.com/drift (a path prefix is kept). [default: none:
    /// from the request's Host and X-Forwarded-Proto]
    #[arg(long, env = "RAFTMESH_DRIFT_PUBLIC_URL")]
    pub drift_public_url: Option<String>,
    /// Messages queued for one DriftDB socket; one further behind is
    /// closed with a reason. [default: 4096]
    #[arg(long, env = "RAFTMESH_DRIFT_SOCKET_QUEUE")]
    pub drift_socket_queue: Option<usize>,
    /// For upgrade testing only: advertise this feature version instead of
    /// the build's, posing as an older release.
    #[arg(long, env = "RAFTMESH_ADVERTISED_VERSION", hide = true)]
    pub advertised_version: Option<u32>,
}

impl ServeArgs {
    /// Defaults, then the file, then env/flags; validated.
    pub fn resolve(&self) -> Result<Config, NodeError> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?;
                toml::from_str(&text)
                    .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))?
            }
            None => Config::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => {$(
                if let Some(v) = &self.$f { c.$f = v.clone(); }
            )*};
        }
        set!(
            node_id,
            data_dir,
            http_addr,
            grpc_addr,
            heartbeat_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            snapshot_logs,
            keep_logs,
            snapshot_chunk_bytes,
            max_key_bytes,
            max_value_bytes,
            write_timeout_ms,
            leader_wait_ms,
            max_pending_writes,
            max_entry_bytes,
            max_list_keys,
            feed_buffer,
            rstmdb_addr,
            rstmdb_max_frame_bytes,
            drift_socket_queue,
            advertised_version
        );
        if self.drift_public_url.is_some() {
            c.drift_public_url = self.drift_public_url.clone();
        }
        if self.rstmdb_token_file.is_some() {
            c.rstmdb_token_file = self.rstmdb_token_file.clone();
        }
        if !self.rstmdb_token_hashes.is_empty() {
            c.rstmdb_token_hashes = self.rstmdb_token_hashes.clone();
        }
        if self.advertise_grpc.is_some() {
            c.advertise_grpc = self.advertise_grpc.clone();
        }
        if self.advertise_http.is_some() {
            c.advertise_http = self.advertise_http.clone();
        }
        if self.advertise_rstmdb.is_some() {
            c.advertise_rstmdb = self.advertise_rstmdb.clone();
        }
        if !self.peers.is_empty() {
            c.peers = self.peers.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_single_node() {
        let c = ServeArgs::default().resolve().unwrap();
        assert_eq!(c, Config::default());
        assert!(c.peer_map().unwrap().is_empty());
    }

    #[test]
    fn file_then_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftmesh.toml");
        std::fs::write(
            &path,
            "node_id = 2\nhttp_addr = \"0.0.0.0:9000\"\npeers = [\"1=a:1\", \"2=b:2\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            http_addr: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.http_addr, "127.0.0.1:1");
        assert_eq!(c.peer_map().unwrap().get(&1).unwrap(), "a:1");
    }

    #[test]
    fn bad_configs_are_named() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.node_id = 0).contains("node-id"));
        assert!(bad(|c| c.peers = vec!["2=x:1".into()]).contains("not this node"));
        assert!(bad(|c| c.peers = vec!["1-x:1".into()]).contains("ID=HOST:PORT"));
        assert!(bad(|c| c.election_timeout_max_ms = 10).contains("election"));
        assert!(
            bad(|c| c.advertised_version = raftmesh_proto::FEATURE_VERSION + 1)
                .contains("advertised-version")
        );
        assert!(bad(|c| c.advertised_version = 0).contains("advertised-version"));
    }

    /// `serve --help` states every default, and states it truly.
    #[test]
    fn help_names_every_default() {
        use clap::Args as _;
        let help = ServeArgs::augment_args(clap::Command::new("serve"))
            .render_long_help()
            .to_string();
        let d = Config::default();
        let shown = [
            format!("[default: {}]", d.node_id),
            format!("[default: {}]", d.data_dir.display()),
            format!("[default: {}]", d.http_addr),
            format!("[default: {}]", d.grpc_addr),
            format!("[default: {}]", d.heartbeat_ms),
            format!("[default: {}]", d.election_timeout_min_ms),
            format!("[default: {}]", d.election_timeout_max_ms),
            format!("[default: {}]", d.snapshot_logs),
            format!("[default: {}]", d.keep_logs),
            format!("[default: {}]", d.snapshot_chunk_bytes),
            format!("[default: {}]", d.max_key_bytes),
            format!("[default: {}]", d.max_value_bytes),
            format!("[default: {}]", d.write_timeout_ms),
            format!("[default: {}]", d.leader_wait_ms),
            format!("[default: {}]", d.max_pending_writes),
            format!("[default: {}]", d.max_entry_bytes),
            format!("[default: {}]", d.max_list_keys),
            format!("[default: {}]", d.feed_buffer),
            format!("[default: {}]", d.rstmdb_addr),
            format!("[default: {}]", d.rstmdb_max_frame_bytes),
            format!("[default: {}]", d.drift_socket_queue),
        ];
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for s in shown {
            assert!(flat.contains(&s), "serve --help lacks {s}:\n{help}");
        }
        // Every flag has a description.
        let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
        for arg in cmd.get_arguments() {
            assert!(
                arg.get_help().is_some() || arg.get_long_help().is_some(),
                "--{} has no help",
                arg.get_id()
            );
        }
    }
}
