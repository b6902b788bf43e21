//! The client side of `raftmesh cluster …`: membership changes and status
//! through any node's gateway, with progress printed while a change waits.

use std::time::Duration;

use raftmesh_proto::ClusterProgress;

use crate::error::NodeError;

/// `--endpoint` as a base URL: `HOST:PORT` means `http://HOST:PORT`.
pub fn endpoint_url(endpoint: &str) -> Result<String, NodeError> {
    let e = endpoint.trim().trim_end_matches('/');
    let url = if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    };
    let bad = || {
        NodeError::Request(format!(
            "--endpoint {endpoint:?} must be http://HOST:PORT or HOST:PORT"
        ))
    };
    let parsed = reqwest::Url::parse(&url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad());
    }
    Ok(url)
}

/// One `raftmesh cluster` operation.
pub enum Op {
    Status,
    AddLearner {
        node_id: u64,
        grpc_addr: String,
        http_addr: String,
        timeout: Duration,
    },
    ChangeMembership {
        voters: Vec<u64>,
        force: bool,
        timeout: Duration,
    },
}

/// Runs `op` against `endpoint`, printing the answer on stdout and progress
/// on stderr. Err when the node refused or could not be reached.
pub async fn run(endpoint: &str, op: Op) -> Result<(), NodeError> {
    let http = reqwest::Client::new();
    let base = endpoint_url(endpoint)?;
    let base = base.as_str();
    let reach = |e: reqwest::Error| NodeError::Request(format!("contacting {base}: {e}"));
    let (path, body, watch) = match op {
        Op::Status => {
            let resp = http
                .get(format!("{base}/cluster?pretty"))
                .send()
                .await
                .map_err(reach)?;
            return finish(base, resp).await;
        }
        Op::AddLearner {
            node_id,
            grpc_addr,
            http_addr,
            timeout,
        } => (
            "add-learner",
            serde_json::json!({"node_id": node_id, "grpc_addr": grpc_addr,
                "http_addr": http_addr, "timeout_ms": timeout.as_millis() as u64}),
            vec![node_id],
        ),
        Op::ChangeMembership {
            voters,
            force,
            timeout,
        } => (
            "change-membership",
            serde_json::json!({ "voters": voters, "force": force,
                "timeout_ms": timeout.as_millis() as u64 }),
            voters,
        ),
    };
    let request = http
        .post(format!("{base}/cluster/{path}?pretty"))
        .json(&body)
        .send();
    tokio::pin!(request);
    // While the change runs, show how far the members it waits for are.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let resp = loop {
        tokio::select! {
            r = &mut request => break r.map_err(reach)?,
            _ = tick.tick() => print_progress(&http, base, &watch).await,
        }
    };
    finish(base, resp).await
}

async fn print_progress(http: &reqwest::Client, base: &str, ids: &[u64]) {
    let Ok(resp) = http
        .get(format!("{base}/cluster/progress"))
        .timeout(Duration::from_millis(900))
        .send()
        .await
    else {
        return;
    };
    let Ok(p) = resp.json::<ClusterProgress>().await else {
        return;
    };
    // Voters already in place are not what the change waits for.
    let parts: Vec<String> = ids
        .iter()
        .filter(|id| p.member(**id).is_none_or(|m| !m.voter))
        .map(|id| match p.member(*id) {
            None => format!("node {id}: not a member yet"),
            Some(m) => format!(
                "node {id}: matched {} (leader committed {}), last append {}",
                m.matched_index
                    .map_or_else(|| "nothing".into(), |i| i.to_string()),
                p.committed_index,
                m.last_contact_ms
                    .map_or_else(|| "never".into(), |c| format!("{c} ms ago")),
            ),
        })
        .collect();
    if !parts.is_empty() {
        eprintln!("waiting: {}", parts.join("; "));
    }
}

async fn finish(base: &str, resp: reqwest::Response) -> Result<(), NodeError> {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    println!("{body}");
    if !status.is_success() {
        return Err(NodeError::Request(format!("{base} answered {status}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::endpoint_url;

    #[test]
    fn endpoint_without_scheme_is_http() {
        assert_eq!(
            endpoint_url("127.0.0.1:8082").unwrap(),
            "http://127.0.0.1:8082"
        );
        assert_eq!(endpoint_url("http://n1:8080/").unwrap(), "http://n1:8080");
        let e = endpoint_url("ftp://x:1").unwrap_err().to_string();
        assert!(e.contains("ftp://x:1"), "{e}");
    }
}
