//! `lakehouse`: landed CSV -> bronze -> silver -> gold Delta Lake tables,
//! with SQL models run by Apache DataFusion.

pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod console;
pub mod dedup;
pub mod delta;
pub mod error;
pub mod failpoint;
pub mod fast_cast;
pub mod functions;
pub mod gather;
pub mod ingest;
pub mod limits;
pub mod lineage;
pub mod local_reads;
pub mod lock;
pub mod lookup_join;
pub mod maintain;
pub mod manifest;
pub mod model;
pub mod pg_bool;
pub mod pg_patterns;
pub mod pipeline;
pub mod progress;
pub mod prom;
pub mod quality;
pub mod query;
pub mod report;
pub mod runlog;
pub mod runner;
pub mod runs;
pub mod serve;
pub mod session;
pub mod sql_policy;
pub mod storage;
#[cfg(test)]
mod testing;
pub mod text;
pub mod units;
pub mod upsert;

pub use error::{Error, Result};
