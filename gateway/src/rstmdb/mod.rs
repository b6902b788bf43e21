//! The rstmdb API (spec `rstmdb.md`): its TCP wire, its JSON envelopes, the
//! dispatch of every command, and its error → code mapping.

pub mod frame;
mod http;
pub mod ops;
pub mod server;
pub mod wire;

pub(crate) use http::routes;
pub use server::{run, token_hash, RstmdbConfig};
