//! The gateway's own Prometheus metrics: a request counter and a latency
//! histogram. Hand-written because two metric families do not justify a
//! registry crate. Labels use the matched route template (`/kv/{key}`), not
//! the raw path, and a fixed method set, so cardinality stays bounded no
//! matter what clients send.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;

use axum::http::Method;

/// Upper bounds (seconds) of the latency buckets: sub-millisecond local
/// reads up to multi-second writes waiting out an election.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Route label for requests no route matched (404 fallback).
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Default)]
struct Histogram {
    /// Per-bucket (non-cumulative) counts; cumulated when rendered.
    buckets: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct RouteStats {
    requests: HashMap<(&'static str, u16), u64>,
    latency: HashMap<&'static str, Histogram>,
}

/// Request metrics of one gateway. One short critical section per request.
#[derive(Default)]
pub struct HttpMetrics {
    routes: Mutex<HashMap<String, RouteStats>>,
}

/// Maps the method to a fixed label set; custom methods share `OTHER`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl HttpMetrics {
    pub fn record(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let stats = match routes.get_mut(route) {
            Some(s) => s,
            None => routes.entry(route.to_owned()).or_default(),
        };
        *stats.requests.entry((method, status)).or_default() += 1;
        let h = stats.latency.entry(method).or_default();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| seconds <= le) {
            h.buckets[i] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Prometheus text exposition format (0.0.4), sorted for stable output.
    pub fn render(&self) -> String {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let sorted: BTreeMap<&str, &RouteStats> =
            routes.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut out = String::new();
        out.push_str(
            "# HELP raftmesh_http_requests_total HTTP requests answered by the gateway, \
             by matched route, method and status.\n\
             # TYPE raftmesh_http_requests_total counter\n",
        );
        for (route, stats) in &sorted {
            let route = escape_label(route);
            let counts: BTreeMap<_, _> = stats.requests.iter().collect();
            for ((method, status), n) in counts {
                let _ = writeln!(
                    out,
                    "raftmesh_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP raftmesh_http_request_duration_seconds Time from request to response \
             headers, by matched route and method.\n\
             # TYPE raftmesh_http_request_duration_seconds histogram\n",
        );
        for (route, stats) in &sorted {
            let route = escape_label(route);
            let hists: BTreeMap<_, _> = stats.latency.iter().collect();
            for (method, h) in hists {
                let labels = format!("route=\"{route}\",method=\"{method}\"");
                let mut cumulative = 0;
                for (le, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "raftmesh_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "raftmesh_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "raftmesh_http_request_duration_seconds_sum{{{labels}}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "raftmesh_http_request_duration_seconds_count{{{labels}}} {}",
                    h.count
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = HttpMetrics::default();
        m.record("/kv/{key}", "GET", 200, 0.0003);
        m.record("/kv/{key}", "GET", 200, 0.02);
        m.record("/kv/{key}", "GET", 404, 30.0);
        let text = m.render();
        assert!(text.contains("# TYPE raftmesh_http_requests_total counter\n"));
        assert!(text.contains(
            "raftmesh_http_requests_total{route=\"/kv/{key}\",method=\"GET\",status=\"200\"} 2\n"
        ));
        assert!(text.contains(
            "raftmesh_http_requests_total{route=\"/kv/{key}\",method=\"GET\",status=\"404\"} 1\n"
        ));
        let b = |le: &str| {
            format!("raftmesh_http_request_duration_seconds_bucket{{route=\"/kv/{{key}}\",method=\"GET\",le=\"{le}\"}}")
        };
        assert!(text.contains(&format!("{} 1\n", b("0.0005"))));
        assert!(text.contains(&format!("{} 1\n", b("0.01"))));
        assert!(text.contains(&format!("{} 2\n", b("0.025"))));
        assert!(text.contains(&format!("{} 2\n", b("10"))));
        assert!(text.contains(&format!("{} 3\n", b("+Inf"))));
        assert!(text.contains(
            "raftmesh_http_request_duration_seconds_count{route=\"/kv/{key}\",method=\"GET\"} 3\n"
        ));
        // Every sample line is `name{labels} number`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }
}
