//! Query-string flags (`?pretty`, `?stale`, `?consistency=`, `?prefix=`).
//! Parsed by hand so a malformed query never becomes axum's plain-text
//! rejection: unknown or odd parameters are simply ignored.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use percent_encoding::percent_decode_str;

use crate::error::GatewayError;

/// Decoded `name=value` pairs in request order.
#[derive(Debug, Default, Clone)]
pub(crate) struct QueryParams(Vec<(String, String)>);

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

impl QueryParams {
    pub(crate) fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(p), String::new()),
            })
            .collect();
        QueryParams(pairs)
    }

    /// Every decoded pair (for the fuzz targets' round trip).
    pub(crate) fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The first value of `name`, if present (`""` for a bare `?name`).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Presence is enough (`?pretty`); `=false` and `=0` turn it off so a
    /// client can template the flag.
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| !matches!(v, "false" | "0"))
    }

    /// True if the client accepts a read from the local state machine
    /// without a read barrier.
    pub(crate) fn stale(&self) -> Result<bool, GatewayError> {
        if self.flag("stale") {
            return Ok(true);
        }
        match self.get("consistency") {
            None | Some("" | "linearizable" | "strong") => Ok(false),
            Some("stale") => Ok(true),
            Some(other) => Err(GatewayError::BadRequest(format!(
                "consistency must be \"linearizable\" or \"stale\", not {other:?}"
            ))),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(QueryParams::parse(parts.uri.query()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_values() {
        let q = QueryParams::parse(Some("pretty&prefix=a%2Fb+c&stale=0"));
        assert!(q.flag("pretty"));
        assert!(!q.flag("stale"));
        assert_eq!(q.get("prefix"), Some("a/b c"));
        assert!(!q.stale().unwrap());
        assert!(QueryParams::parse(Some("consistency=stale"))
            .stale()
            .unwrap());
        assert!(QueryParams::parse(Some("consistency=eventual"))
            .stale()
            .is_err());
    }
}
