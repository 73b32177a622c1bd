//! Runs that overlap or die: a second run on a busy lake is refused with a
//! clear message (or waits with --wait) and nothing is ingested twice; runs
//! killed with SIGKILL at different moments leave every table readable, and
//! the next run ends with exactly the figures of one clean run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::expected::compute;
use crate::{gen, lakehouse, one, repo, text};

fn spawn_run(lake: &Path, extra: &[&str]) -> Child {
    let pipeline = repo().join("sql");
    Command::new(env!("CARGO_BIN_EXE_lakehouse"))
        .args([
            "run",
            "--lake",
            lake.to_str().unwrap(),
            "--pipeline",
            pipeline.to_str().unwrap(),
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_args(lake: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--lake".into(),
        lake.to_str().unwrap().into(),
        "--pipeline".into(),
        repo().join("sql").to_str().unwrap().into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_is_refused_or_waits_and_nothing_is_ingested_twice() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    gen::generate(
        &lake,
        &gen::Options {
            rows: 150_000,
            files: 3,
            days: 10,
            seed: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let expected = compute(&lake);

    let mut first = spawn_run(&lake, &[]);
    let lock = lake.join("_lakehouse/run.lock");
    let started = Instant::now();
    while !lock.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let args = run_args(&lake);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let second = lakehouse(&args, dir.path());
    assert_eq!(second.status.code(), Some(2), "{}", text(&second));
    assert!(
        text(&second).contains("another run holds this lake"),
        "{}",
        text(&second)
    );
    assert!(text(&second).contains("--wait"), "{}", text(&second));

    let mut waiting: Vec<&str> = args.clone();
    waiting.push("--wait");
    let third = lakehouse(&waiting, dir.path());
    let first = first.wait().unwrap();
    assert!(first.success());
    assert!(third.status.success(), "{}", text(&third));
    assert!(!lock.exists(), "the lock is released");
    assert_eq!(
        one(&lake, "SELECT count(*) FROM bronze.orders").await as u64,
        expected.bronze_rows,
        "no file ingested twice"
    );
    assert_eq!(
        one(&lake, "SELECT count(*) FROM silver.orders").await as u64,
        expected.silver_rows
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_leave_readable_tables_and_the_next_run_finishes_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    gen::generate(
        &lake,
        &gen::Options {
            rows: 60_000,
            files: 4,
            days: 10,
            seed: 9,
            branch_rows: 5_000,
            ..Default::default()
        },
    )
    .unwrap();
    let expected = compute(&lake);

    // Kill points spread over ingest, silver and gold of a debug-build run.
    for delay in [150u64, 600, 1200, 2000, 3000, 4500] {
        let mut child = spawn_run(&lake, &[]);
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever was committed is readable.
        for table in [
            "bronze.orders",
            "bronze.branch_orders",
            "silver.orders",
            "gold.daily_region_sales",
            "gold.category_daily",
        ] {
            let folder = lake.join(table.replace('.', "/"));
            let url = url::Url::from_directory_path(&folder).unwrap();
            if lakehouse::delta::open(&url, &Default::default())
                .await
                .unwrap()
                .is_some()
            {
                one(&lake, &format!("SELECT count(*) FROM {table}")).await;
            }
        }
    }
    let args = run_args(&lake);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let last = lakehouse(&args, dir.path());
    assert!(last.status.success(), "{}", text(&last));
    crate::retail::assert_figures(&lake, &expected).await;
}
