//! Recovery after the faults heal: each probe is a write then a read of a
//! fresh key through one node, which must both succeed within a bound.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{capped, CheckResult, Verdict};

/// Failed probes listed in the details (the count is exact).
const MAX_LISTED: usize = 50;

/// One post-heal probe, as recorded by the harness.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecoveryProbe {
    pub key: String,
    /// Node (1-based) the probe went through.
    pub node: u32,
    pub wrote_ok: bool,
    /// The read succeeded and returned the value written.
    pub read_ok: bool,
    /// From heal to the read's success (or to giving up).
    pub elapsed_ms: u64,
    pub bound_ms: u64,
}

impl RecoveryProbe {
    fn passed(&self) -> bool {
        self.wrote_ok && self.read_ok && self.elapsed_ms <= self.bound_ms
    }
}

/// Valid if every probe wrote and read back within its bound; unknown if
/// there are no probes (recovery was not exercised).
pub fn check_recovery(probes: &[RecoveryProbe]) -> CheckResult {
    let failed: Vec<&RecoveryProbe> = probes.iter().filter(|p| !p.passed()).collect();
    let verdict = if probes.is_empty() {
        Verdict::Unknown
    } else if failed.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    let details = json!({
        "probes": probes.len(),
        "failed_count": failed.len(),
        "failed": capped(&failed, MAX_LISTED),
        "max_elapsed_ms": probes.iter().map(|p| p.elapsed_ms).max(),
    });
    CheckResult::new("recovery", verdict, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(node: u32, wrote_ok: bool, read_ok: bool, elapsed_ms: u64) -> RecoveryProbe {
        RecoveryProbe {
            key: format!("recovery-{node}"),
            node,
            wrote_ok,
            read_ok,
            elapsed_ms,
            bound_ms: 10_000,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(check_recovery(&[]).verdict, Verdict::Unknown);
        let ok = [probe(1, true, true, 800), probe(2, true, true, 10_000)];
        assert_eq!(check_recovery(&ok).verdict, Verdict::Valid);
        for bad in [
            probe(3, false, true, 10),
            probe(3, true, false, 10),
            probe(3, true, true, 10_001),
        ] {
            let r = check_recovery(&[ok[0].clone(), bad.clone()]);
            assert_eq!(r.verdict, Verdict::Invalid, "{bad:?}");
            assert_eq!(r.details["failed"][0]["node"], 3);
        }
    }

    #[test]
    fn probe_round_trips_through_json() {
        let p = probe(1, true, true, 5);
        let back: RecoveryProbe =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
