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
    assert_eq!(second.status.code(), Some(3), "{}", text(&second));
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

    // Each run is killed (SIGKILL) the moment the lake shows it reached a
    // phase, not after a fixed sleep: on any machine every kill lands in a
    // run in progress, holding the lease, in the phase it names. Each run
    // resumes what the one before it left.
    let log_exists = |table: &str| lake.join(table).join("_delta_log").exists();
    let phases: [(&str, &dyn Fn() -> bool); 4] = [
        ("start (lease taken)", &|| {
            lake.join("_lakehouse/run.lock").exists()
        }),
        ("bronze (first source committed)", &|| {
            commits(&lake.join("bronze/orders")) >= 2
        }),
        ("silver (model started)", &|| log_exists("silver/orders")),
        ("gold (model started)", &|| {
            log_exists("gold/daily_region_sales")
        }),
    ];
    let mut interrupted = Vec::new();
    for (phase, reached) in phases {
        let mut child = spawn_run(&lake, &[]);
        let started = Instant::now();
        while !reached() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before reaching {phase}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "{phase} never reached"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let alive = child.try_wait().unwrap().is_none();
        // The lease in the lock is this run's (its pid), not a killed one's.
        let holder = std::fs::read_to_string(lake.join("_lakehouse/run.lock"))
            .ok()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .and_then(|l| l["pid"].as_u64());
        let leased = holder == Some(child.id() as u64);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        assert!(alive, "the kill at {phase} hit a finished run");
        assert!(
            leased,
            "the kill at {phase} hit a run not holding the lease ({holder:?})"
        );
        interrupted.push(phase);
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
    eprintln!("runs killed in progress, one per phase: {interrupted:?}");
    assert_eq!(interrupted.len(), 4);
    // The killed runs' lock is left behind; the next run takes it over
    // (its process is gone) and finishes the work.
    assert!(lake.join("_lakehouse/run.lock").exists());
    let args = run_args(&lake);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let last = lakehouse(&args, dir.path());
    assert!(last.status.success(), "{}", text(&last));
    crate::retail::assert_figures(&lake, &expected).await;
}

/// A lock file naming another run, written the way a run writes it.
fn foreign_lock(lake: &Path, run_id: &str, expires_in_ms: i64) {
    let lock = lake.join("_lakehouse/run.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let body = serde_json::json!({
        "run_id": run_id,
        "host": "another-host",
        "pid": 1,
        "acquired_at": chrono::Utc::now().to_rfc3339(),
        "expires_at": chrono::Utc::now().timestamp_millis() + expires_in_ms,
    });
    let tmp = lock.with_extension("steal");
    std::fs::write(&tmp, body.to_string()).unwrap();
    std::fs::rename(&tmp, &lock).unwrap();
}

fn commits(table: &Path) -> usize {
    std::fs::read_dir(table.join("_delta_log"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// After its lease is taken (it expired while the run was stalled, and
/// another run took it), a run commits nothing more, says why, and leaves
/// the other run's lock alone. Before the fence, it went on committing and
/// then deleted the other run's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_is_taken_stops_before_its_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    gen::generate(
        &lake,
        &gen::Options {
            rows: 150_000,
            files: 3,
            days: 10,
            seed: 9,
            ..Default::default()
        },
    )
    .unwrap();
    let run = spawn_run(&lake, &[]);
    let bronze = lake.join("bronze/orders");
    let started = Instant::now();
    // Once bronze.orders has its first rows committed, another run takes
    // the lease.
    while commits(&bronze) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never committed bronze.orders"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    foreign_lock(&lake, "thief", 600_000);
    let out = run.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a run that lost its lease exits 3 (retry later): {t}"
    );
    assert!(t.contains("lost the lake's lease to run thief"), "{t}");
    // Nothing after the theft: silver and gold have no data commit.
    for table in ["silver/orders", "gold/daily_region_sales"] {
        let parquet = crate::data_files(&lake.join(table));
        assert_eq!(parquet, 0, "{table} was written after the lease was lost");
    }
    // The thief's lock is still there.
    let lock = std::fs::read_to_string(lake.join("_lakehouse/run.lock")).unwrap();
    assert!(lock.contains("\"thief\""), "{lock}");
}

/// An expired lease is taken over; of two runs racing for it exactly one
/// wins, the other is told another run holds the lake, and nothing is
/// ingested twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_by_exactly_one_of_two_racing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    gen::generate(
        &lake,
        &gen::Options {
            rows: 150_000,
            files: 3,
            days: 10,
            seed: 11,
            ..Default::default()
        },
    )
    .unwrap();
    let expected = compute(&lake);
    foreign_lock(&lake, "expired", -1_000);
    let a = spawn_run(&lake, &[]);
    let b = spawn_run(&lake, &[]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = [a.status.code(), b.status.code()];
    let winners = codes.iter().filter(|c| **c == Some(0)).count();
    assert_eq!(winners, 1, "{codes:?}\n{}\n{}", text(&a), text(&b));
    let loser = if a.status.success() { &b } else { &a };
    assert_eq!(loser.status.code(), Some(3), "{}", text(loser));
    assert!(
        text(loser).contains("another run holds this lake"),
        "{}",
        text(loser)
    );
    assert!(
        !lake.join("_lakehouse/run.lock").exists(),
        "the winner released the lock"
    );
    assert_eq!(
        one(&lake, "SELECT count(*) FROM bronze.orders").await as u64,
        expected.bronze_rows
    );
}
