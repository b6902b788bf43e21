//! The pm3 write bodies as their routes read them, for the fuzz targets
//! (re-exported by [`crate::fuzzing`]); the body types stay private here.

use super::{CasBody, PutBody, CAS_SHAPE, PUT_SHAPE};
use crate::error::GatewayError;
use crate::json;

/// A `PUT /kv/{key}` body: the value's raw JSON text (if present) and the
/// revision, as `put_key` gets them.
pub fn put_body(bytes: &[u8]) -> Result<(Option<String>, Option<u64>), GatewayError> {
    let b: PutBody = json::parse_body(bytes, PUT_SHAPE)?;
    Ok((b.value.map(|v| v.get().to_owned()), b.revision))
}

/// A `POST /kv/{key}/cas` body: `expected` and `desired` as raw JSON text.
pub fn cas_body(bytes: &[u8]) -> Result<(Option<String>, Option<String>), GatewayError> {
    let b: CasBody = json::parse_body(bytes, CAS_SHAPE)?;
    let text = |v: Option<Box<serde_json::value::RawValue>>| v.map(|v| v.get().to_owned());
    Ok((text(b.expected), text(b.desired)))
}

/// The pm3 key rule, applied to the percent-decoded path segment.
pub fn validate_key(key: &str, max_key_bytes: usize) -> Result<(), GatewayError> {
    super::validate_key(key, max_key_bytes)
}
