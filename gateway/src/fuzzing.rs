//! The gateway's parsers of request bytes, called as the routes call them,
//! for the fuzz targets in `gateway/fuzz/` (which live outside this crate
//! and so see only its public items). Not an API: nothing else may use it.
//! Always compiled, so a change to a parser that breaks a target fails the
//! ordinary build.

pub use crate::ops::fuzzing::{add_learner_body, change_membership_body, retention_body};
pub use crate::pm3::fuzzing::{cas_body, put_body, validate_key};

use crate::error::GatewayError;

/// A DriftDB client frame as a socket reads it: text as JSON, binary as
/// CBOR, then the message schema. `Err` is the `error` message's text.
pub fn drift_message(frame: &[u8], binary: bool) -> Result<crate::drift::wire::ClientMsg, String> {
    let value = if binary {
        crate::drift::cbor_decode(frame)?
    } else {
        let text = std::str::from_utf8(frame).map_err(|e| format!("not UTF-8: {e}"))?;
        serde_json::from_str(text).map_err(|e| format!("the message is not JSON: {e}"))?
    };
    crate::drift::wire::parse(&value)
}

/// CBOR for an outgoing room message built as JSON text.
pub fn drift_encode(json: &str) -> Vec<u8> {
    crate::drift::cbor_encode(json)
}
use crate::query::QueryParams;

/// Removes insignificant whitespace from valid JSON text (request values).
pub fn minify(text: &str) -> String {
    crate::json::minify(text)
}

/// Indents valid JSON text (`?pretty`).
pub fn prettify(text: &str) -> String {
    crate::json::prettify(text)
}

/// A parsed query string.
pub struct Query(QueryParams);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        Query(QueryParams::parse(query))
    }

    /// The decoded `(name, value)` pairs in request order.
    pub fn pairs(&self) -> &[(String, String)] {
        self.0.pairs()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.0.flag(name)
    }

    pub fn stale(&self) -> Result<bool, GatewayError> {
        self.0.stale()
    }
}
