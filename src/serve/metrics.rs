//! What `GET /metrics` says about the server, in Prometheus text format:
//! queries by protocol and outcome, their latency, rows and bytes returned,
//! queries running, Postgres connections, refused statements and the table
//! versions served.
//!
//! Every query passes the per-query limits (`crate::limits`), whose root
//! operator reports to [`ServeMetrics`] through [`QueryObserver`]; the
//! protocol is the task-local [`PROTOCOL`] each protocol sets around its
//! connections or requests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::error::DataFusionError;

use crate::limits::{QueryObserver, QueryProbe};
use crate::prom::{Exposition, Kind};
use crate::sql_policy::{ErrorKind, QueryError};

tokio::task_local! {
    /// The protocol a query came in by: `postgres`, `flight` or `http`.
    pub static PROTOCOL: &'static str;
}

/// The protocol of the current task, `other` outside one.
pub fn protocol() -> &'static str {
    PROTOCOL.try_with(|p| *p).unwrap_or("other")
}

/// Latency buckets, in seconds: from a cached dashboard tile to a report.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations at or below each bucket's bound (not cumulative here).
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct State {
    queries: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    rows: BTreeMap<&'static str, u64>,
    bytes: BTreeMap<&'static str, u64>,
    running: BTreeMap<&'static str, i64>,
    connections: BTreeMap<&'static str, i64>,
    refused: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default)]
pub struct ServeMetrics {
    started: f64,
    state: Mutex<State>,
    /// Table versions the catalog opened, `layer.name` → version.
    versions: std::sync::OnceLock<Arc<Mutex<BTreeMap<String, u64>>>>,
}

impl ServeMetrics {
    pub fn new() -> Self {
        Self {
            started: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            state: Mutex::new(State::default()),
            versions: Default::default(),
        }
    }

    /// Where the catalog records the versions it opens.
    pub fn set_versions(&self, versions: Arc<Mutex<BTreeMap<String, u64>>>) {
        let _ = self.versions.set(versions);
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A statement refused before planning (not a query, too large, ...).
    pub fn refused(&self) {
        let p = protocol();
        self.with(|s| *s.refused.entry(p).or_default() += 1);
    }

    /// A query that failed before it ran (does not parse or plan: unknown
    /// table or column, ...): counted with its outcome, without latency.
    pub fn not_planned(&self, e: &DataFusionError) {
        let (p, outcome) = (protocol(), outcome(e));
        self.with(|s| *s.queries.entry((p, outcome)).or_default() += 1);
    }

    /// A connection opened; the guard closes it when dropped.
    pub fn connection(self: &Arc<Self>, protocol: &'static str) -> ConnectionGuard {
        self.with(|s| *s.connections.entry(protocol).or_default() += 1);
        ConnectionGuard {
            metrics: self.clone(),
            protocol,
        }
    }

    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        let s = self.with(|s| {
            (
                s.queries.clone(),
                s.latency.clone(),
                s.rows.clone(),
                s.bytes.clone(),
                s.running.clone(),
                s.connections.clone(),
                s.refused.clone(),
            )
        });
        let (queries, latency, rows, bytes, running, connections, refused) = s;
        e.family(
            "lakehouse_serve_start_time_seconds",
            Kind::Gauge,
            "When the server started, in Unix seconds.",
        )
        .sample("lakehouse_serve_start_time_seconds", &[], self.started);
        e.family(
            "lakehouse_serve_queries_total",
            Kind::Counter,
            "Queries answered, by protocol and outcome (ok, cancelled, invalid, no_such_table, busy, timeout, memory, failed).",
        );
        for ((p, outcome), n) in &queries {
            e.sample(
                "lakehouse_serve_queries_total",
                &[("protocol", p), ("outcome", outcome)],
                *n as f64,
            );
        }
        e.family(
            "lakehouse_serve_query_duration_seconds",
            Kind::Histogram,
            "Time from a query's start to its last row (or error), by protocol.",
        );
        for (p, h) in &latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts.iter()) {
                cumulative += n;
                e.sample(
                    "lakehouse_serve_query_duration_seconds_bucket",
                    &[("protocol", p), ("le", &crate::prom::number(*bound))],
                    cumulative as f64,
                );
            }
            e.sample(
                "lakehouse_serve_query_duration_seconds_bucket",
                &[("protocol", p), ("le", "+Inf")],
                h.count as f64,
            );
            e.sample(
                "lakehouse_serve_query_duration_seconds_sum",
                &[("protocol", p)],
                h.sum,
            );
            e.sample(
                "lakehouse_serve_query_duration_seconds_count",
                &[("protocol", p)],
                h.count as f64,
            );
        }
        e.family(
            "lakehouse_serve_rows_returned_total",
            Kind::Counter,
            "Rows sent to clients, by protocol.",
        );
        for (p, n) in &rows {
            e.sample(
                "lakehouse_serve_rows_returned_total",
                &[("protocol", p)],
                *n as f64,
            );
        }
        e.family(
            "lakehouse_serve_bytes_returned_total",
            Kind::Counter,
            "Bytes of the results sent to clients (their Arrow size, before the protocol's encoding), by protocol.",
        );
        for (p, n) in &bytes {
            e.sample(
                "lakehouse_serve_bytes_returned_total",
                &[("protocol", p)],
                *n as f64,
            );
        }
        e.family(
            "lakehouse_serve_queries_running",
            Kind::Gauge,
            "Queries running now (waiting for a slot included), by protocol.",
        );
        for (p, n) in &running {
            e.sample(
                "lakehouse_serve_queries_running",
                &[("protocol", p)],
                *n as f64,
            );
        }
        e.family(
            "lakehouse_serve_connections",
            Kind::Gauge,
            "Open client connections (Postgres wire sessions).",
        );
        for (p, n) in &connections {
            e.sample("lakehouse_serve_connections", &[("protocol", p)], *n as f64);
        }
        e.family(
            "lakehouse_serve_refused_statements_total",
            Kind::Counter,
            "Statements refused before they ran (anything but a read-only query, or over the size limits), by protocol.",
        );
        for (p, n) in &refused {
            e.sample(
                "lakehouse_serve_refused_statements_total",
                &[("protocol", p)],
                *n as f64,
            );
        }
        e.family(
            "lakehouse_serve_table_version",
            Kind::Gauge,
            "The latest version of each table a query has read.",
        );
        let versions = self
            .versions
            .get()
            .map(|v| v.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        for (t, v) in &versions {
            e.sample("lakehouse_serve_table_version", &[("table", t)], *v as f64);
        }
        e.finish()
    }
}

pub struct ConnectionGuard {
    metrics: Arc<ServeMetrics>,
    protocol: &'static str,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let p = self.protocol;
        self.metrics
            .with(|s| *s.connections.entry(p).or_default() -= 1);
    }
}

fn outcome(e: &DataFusionError) -> &'static str {
    match QueryError::from_df(e).kind {
        ErrorKind::Busy => "busy",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Memory => "memory",
        ErrorKind::NoSuchTable => "no_such_table",
        ErrorKind::Invalid | ErrorKind::TooComplex | ErrorKind::Refused => "invalid",
        _ => "failed",
    }
}

impl QueryObserver for Arc<ServeMetrics> {
    fn start(&self) -> Box<dyn QueryProbe> {
        let protocol = protocol();
        self.with(|s| *s.running.entry(protocol).or_default() += 1);
        Box::new(Probe {
            metrics: self.clone(),
            protocol,
            started: Instant::now(),
            rows: 0,
            bytes: 0,
            ended: false,
        })
    }
}

struct Probe {
    metrics: Arc<ServeMetrics>,
    protocol: &'static str,
    started: Instant,
    rows: u64,
    bytes: u64,
    ended: bool,
}

impl Probe {
    fn finish(&mut self, outcome: &'static str) {
        if self.ended {
            return;
        }
        self.ended = true;
        let seconds = self.started.elapsed().as_secs_f64();
        let (p, rows, bytes) = (self.protocol, self.rows, self.bytes);
        self.metrics.with(|s| {
            *s.queries.entry((p, outcome)).or_default() += 1;
            s.latency.entry(p).or_default().observe(seconds);
            *s.rows.entry(p).or_default() += rows;
            *s.bytes.entry(p).or_default() += bytes;
            *s.running.entry(p).or_default() -= 1;
        });
    }
}

impl QueryProbe for Probe {
    fn batch(&mut self, rows: usize, bytes: usize) {
        self.rows += rows as u64;
        self.bytes += bytes as u64;
    }

    fn end(&mut self, error: Option<&DataFusionError>) {
        self.finish(error.map_or("ok", outcome));
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or stopped reading.
        self.finish("cancelled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counted() {
        let m = Arc::new(ServeMetrics::new());
        for (seconds, fail) in [(0.001, false), (0.2, false), (7.0, true)] {
            let mut p = Probe {
                metrics: m.clone(),
                protocol: "http",
                started: Instant::now() - std::time::Duration::from_secs_f64(seconds),
                rows: 0,
                bytes: 0,
                ended: false,
            };
            m.with(|s| *s.running.entry("http").or_default() += 1);
            p.batch(3, 100);
            let e = DataFusionError::ResourcesExhausted("query cancelled: time".into());
            p.end(fail.then_some(&e));
        }
        let text = m.render();
        for line in [
            "lakehouse_serve_query_duration_seconds_bucket{protocol=\"http\",le=\"0.005\"} 1",
            "lakehouse_serve_query_duration_seconds_bucket{protocol=\"http\",le=\"0.25\"} 2",
            "lakehouse_serve_query_duration_seconds_bucket{protocol=\"http\",le=\"5\"} 2",
            "lakehouse_serve_query_duration_seconds_bucket{protocol=\"http\",le=\"10\"} 3",
            "lakehouse_serve_query_duration_seconds_bucket{protocol=\"http\",le=\"+Inf\"} 3",
            "lakehouse_serve_query_duration_seconds_count{protocol=\"http\"} 3",
            "lakehouse_serve_queries_total{protocol=\"http\",outcome=\"ok\"} 2",
            "lakehouse_serve_queries_total{protocol=\"http\",outcome=\"timeout\"} 1",
            "lakehouse_serve_rows_returned_total{protocol=\"http\"} 9",
            "lakehouse_serve_queries_running{protocol=\"http\"} 0",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
