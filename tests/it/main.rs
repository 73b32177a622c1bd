//! Integration tests: one binary, one module per capability. They run the
//! real `lakehouse` binary against real Delta tables in temp folders and read
//! the results back with SQL (and with Python readers in `retail`).

mod cluster;
mod corpus;
mod crash;
mod expected;
mod folder_readers;
#[path = "../../scripts/gen/src/lib.rs"]
mod gen;
mod incremental;
mod maintain;
mod newcomer;
mod observe;
mod pipeline_cli;
mod retail;
mod s3;
mod scale;
mod serve;
mod write_modes;

use std::path::{Path, PathBuf};
use std::process::Output;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the real binary.
pub fn lakehouse(args: &[&str], cwd: &Path) -> Output {
    lakehouse_with_env(args, cwd, &[])
}

/// Runs the real binary with extra environment variables.
pub fn lakehouse_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lakehouse"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("the lakehouse binary runs")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs SQL over the lake through the library's one session builder.
pub async fn sql(lake: &Path, query: &str) -> Vec<RecordBatch> {
    let lake = lakehouse::storage::Lake::open(lake.to_str().unwrap(), Default::default()).unwrap();
    let (ctx, _) = lakehouse::session::build(&lake, &Default::default())
        .await
        .unwrap();
    ctx.sql(query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// Every row of a query whose columns are all integers (NULL as i64::MIN).
pub async fn ints(lake: &Path, query: &str) -> Vec<Vec<i64>> {
    strings(lake, query)
        .await
        .into_iter()
        .map(|row| {
            row.iter()
                .map(|v| {
                    if v == "NULL" {
                        i64::MIN
                    } else {
                        v.parse().unwrap_or_else(|e| panic!("{query}: `{v}`: {e}"))
                    }
                })
                .collect()
        })
        .collect()
}

pub async fn one(lake: &Path, query: &str) -> i64 {
    let rows = ints(lake, query).await;
    assert_eq!(rows.len(), 1, "{query} returned {} rows", rows.len());
    rows[0][0]
}

/// Every row as strings (for keys and mixed columns).
pub async fn strings(lake: &Path, query: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for b in sql(lake, query).await {
        // Each column cast once per batch, not once per row.
        let columns: Vec<_> = b
            .columns()
            .iter()
            .map(|c| {
                datafusion::arrow::compute::cast(c, &datafusion::arrow::datatypes::DataType::Utf8)
                    .unwrap()
            })
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| {
                        let c = c.as_string::<i32>();
                        if c.is_null(r) {
                            "NULL".to_string()
                        } else {
                            c.value(r).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// `one` for synchronous tests.
pub fn block_on_one(lake: &Path, query: &str) -> i64 {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(one(lake, query))
}

/// The Python interpreter that has duckdb, polars and deltalake (installed by
/// scripts/setup into .venv).
/// The line of `table` in a run's summary.
pub fn summary_line<'a>(summary: &'a str, table: &str) -> &'a str {
    summary
        .lines()
        .find(|l| l.starts_with(&format!("{table} ")))
        .unwrap_or_else(|| panic!("no line for {table} in:\n{summary}"))
}

/// Every file under `dir`, recursively, sorted (none when it is missing).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Parquet data files under a table folder (checkpoints in `_delta_log`
/// aside).
pub fn data_files(table: &Path) -> usize {
    files(table)
        .iter()
        .filter(|p| {
            p.extension().is_some_and(|x| x == "parquet")
                && !p.components().any(|c| c.as_os_str() == "_delta_log")
        })
        .count()
}

pub fn python() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("LAKEHOUSE_PYTHON") {
        return p.into();
    }
    let venv = repo().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}
