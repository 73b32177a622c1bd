//! The same binary as an Apache DataFusion Ballista cluster: a scheduler and
//! two executors as real processes on loopback, answering the same SQL as a
//! local session, value for value, with the work done on the executors.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{gen, lakehouse, repo, text};

/// A node process, killed when dropped.
pub(crate) struct Node(pub(crate) Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(args: &[&str], cwd: &Path) -> Child {
    node_with(args, cwd, &[])
}

/// A node with extra environment (credentials of its own, say).
pub(crate) fn node_with(args: &[&str], cwd: &Path, env: &[(&str, String)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lakehouse"));
    c.args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // To see what the nodes did: LAKEHOUSE_TEST_NODE_LOGS=DIR keeps each
    // node's log there, at LAKEHOUSE_TEST_NODE_RUST_LOG (default info).
    if let Ok(logs) = std::env::var("LAKEHOUSE_TEST_NODE_LOGS") {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::fs::create_dir_all(&logs).unwrap();
        let file = std::fs::File::create(Path::new(&logs).join(format!("{n:02}-{}.log", args[0])))
            .unwrap();
        c.stderr(file).env(
            "RUST_LOG",
            std::env::var("LAKEHOUSE_TEST_NODE_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("the lakehouse binary starts")
}

/// A scheduler on a free port, and its `df://` address.
pub(crate) fn scheduler(cwd: &Path) -> (Node, String) {
    let mut child = node(&["scheduler", "--bind", "127.0.0.1:0"], cwd);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("lakehouse scheduler listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the scheduler: {line:?}"))
        .to_string();
    (Node(child), address)
}

fn executor(scheduler: &str, work_dir: &Path, cwd: &Path) -> Node {
    std::fs::create_dir_all(work_dir).unwrap();
    Node(node(&executor_args(scheduler, work_dir), cwd))
}

fn executor_args<'a>(scheduler: &'a str, work_dir: &'a Path) -> [&'a str; 7] {
    [
        "executor",
        "--scheduler",
        scheduler,
        "--slots",
        "2",
        "--work-dir",
        work_dir.to_str().unwrap(),
    ]
}

/// An executor whose log (the project's lines at info) goes to `log`.
fn logged_executor(scheduler: &str, work_dir: &Path, cwd: &Path, log: &Path) -> Node {
    std::fs::create_dir_all(work_dir).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lakehouse"))
        .args(executor_args(scheduler, work_dir))
        .current_dir(cwd)
        .env("RUST_LOG", "warn,lakehouse=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("the lakehouse binary starts");
    Node(child)
}

fn query(lake: &Path, cluster: Option<&str>, sql: &str) -> String {
    let mut args = vec!["query", "--lake", lake.to_str().unwrap(), "--format", "csv"];
    if let Some(c) = cluster {
        args.extend(["--cluster", c]);
    }
    args.push(sql);
    let out = lakehouse(&args, lake.parent().unwrap());
    assert!(out.status.success(), "{sql} on {cluster:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Queries that touch every layer, partition pruning (date range and
/// region), a join, time travel and an empty result.
const QUERIES: &[&str] = &[
    "SELECT region, count(*) AS n, sum(revenue) AS revenue, sum(orders) AS orders FROM gold.daily_region_sales GROUP BY region ORDER BY region",
    "SELECT count(*) AS n, sum(amount) AS amount, count(DISTINCT customer_id) AS customers FROM silver.orders WHERE order_date BETWEEN DATE '2025-01-03' AND DATE '2025-01-06' AND region = 'east'",
    "SELECT order_date, count(*) AS n FROM silver.orders GROUP BY order_date ORDER BY order_date",
    "SELECT count(*) AS n, count(DISTINCT _source_file) AS files FROM bronze.orders",
    "SELECT _reason, count(*) AS n FROM quarantine.silver_orders GROUP BY _reason ORDER BY _reason",
    "SELECT g.region, sum(g.revenue) AS gold, sum(s.amount) AS silver FROM (SELECT region, sum(revenue) AS revenue FROM gold.daily_region_sales GROUP BY region) g JOIN (SELECT region, sum(amount) AS amount FROM silver.orders GROUP BY region) s ON g.region = s.region GROUP BY g.region ORDER BY g.region",
    "SELECT count(*) AS n FROM gold.\"daily_region_sales@v0\"",
    "SELECT count(*) AS n FROM silver.orders WHERE region = 'no such region'",
];

#[test]
fn queries_on_a_ballista_cluster_equal_local_answers() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged");
    gen::generate(
        &staged,
        &gen::Options {
            rows: 20_000,
            files: 3,
            days: 10,
            seed: 11,
            ..Default::default()
        },
    )
    .unwrap();
    let lake = dir.path().join("lake");
    crate::serve::copy_dir(&staged.join("landing"), &lake.join("landing"));
    let out = lakehouse(
        &[
            "run",
            "--lake",
            lake.to_str().unwrap(),
            "--pipeline",
            repo().join("sql").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));

    let (_scheduler, address) = scheduler(dir.path());
    let work = [dir.path().join("exec-a"), dir.path().join("exec-b")];
    let _executors: Vec<Node> = work
        .iter()
        .map(|w| executor(&address, w, dir.path()))
        .collect();

    for sql in QUERIES {
        let local = query(&lake, None, sql);
        assert!(
            local.lines().count() >= 2,
            "{sql}: no rows locally: {local}"
        );
        let remote = query(&lake, Some(&address), sql);
        assert_eq!(remote, local, "{sql}");
    }
    // The region filter pruned every file: the answer is a count of 0.
    assert_eq!(query(&lake, None, QUERIES[7]), "n\n0\n");
    // The executors did the work: their shuffle folders hold the stages'
    // outputs.
    for w in &work {
        assert!(
            !crate::files(w).is_empty(),
            "executor {} ran no task",
            w.display()
        );
    }

    // In-process cluster, for trying it on one machine. Its executor's
    // shuffle files go to the temporary folder and leave with the process
    // (they once stayed: gigabytes per run at 10M rows).
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    for sql in [QUERIES[0], QUERIES[5]] {
        let out = crate::lakehouse_with_env(
            &[
                "query",
                "--lake",
                lake.to_str().unwrap(),
                "--format",
                "csv",
                "--cluster",
                "standalone",
                sql,
            ],
            dir.path(),
            &[("TMPDIR", tmp.to_str().unwrap())],
        );
        assert!(out.status.success(), "{sql}: {}", text(&out));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            query(&lake, None, sql)
        );
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            left.is_empty(),
            "{sql}: the standalone cluster left {left:?}"
        );
    }

    // An executor given no --work-dir keeps its shuffle files in a folder
    // of the temporary folder and removes it when it stops (SIGTERM). It
    // is its scheduler's only executor, so it does the work.
    let tmp = dir.path().join("tmp-executor");
    std::fs::create_dir(&tmp).unwrap();
    let (_lone_scheduler, lone_address) = scheduler(dir.path());
    let mut lone = Node(node_with(
        &["executor", "--scheduler", &lone_address, "--slots", "2"],
        dir.path(),
        &[("TMPDIR", tmp.to_str().unwrap().to_string())],
    ));
    assert_eq!(
        query(&lake, Some(&lone_address), QUERIES[0]),
        query(&lake, None, QUERIES[0])
    );
    assert!(
        !crate::files(&tmp).is_empty(),
        "the executor wrote no shuffle file under TMPDIR"
    );
    let term = Command::new("kill")
        .args(["-TERM", &lone.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopped = lone.0.wait().unwrap();
    assert!(stopped.success(), "the executor stopped with {stopped}");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "the stopped executor left {left:?}");

    // A scheduler that is not there: a clear error, not a hang.
    let out = lakehouse(
        &[
            "query",
            "--lake",
            lake.to_str().unwrap(),
            "--cluster",
            "df://127.0.0.1:9",
            "SELECT 1",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("127.0.0.1:9"), "{}", text(&out));
}

/// What a lake holds, table by table, as one text: counts, sums and
/// per-partition figures of every layer and the run's counts.
fn fingerprint(lake: &Path) -> String {
    let checks = [
        "SELECT count(*) AS n, count(DISTINCT _source_file) AS files FROM bronze.orders",
        "SELECT count(*) AS n FROM quarantine.bronze_orders",
        // Line by line: every row's line (pieces of a file count lines).
        "SELECT _source_file, sum(_source_line) AS lines, count(DISTINCT _source_line) AS d, sum(length(order_id)) AS ids FROM bronze.orders GROUP BY 1 ORDER BY 1",
        "SELECT _source_file, sum(_source_line) AS lines, sum(_byte_offset) AS offsets, count(DISTINCT _reason) AS reasons FROM quarantine.bronze_orders GROUP BY 1 ORDER BY 1",
        "SELECT order_date, region, count(*) AS n, sum(amount) AS amount, sum(quantity) AS q, count(DISTINCT order_id) AS ids FROM silver.orders GROUP BY 1, 2 ORDER BY 1, 2",
        "SELECT _reason, count(*) AS n, count(DISTINCT _source_line) AS lines FROM quarantine.silver_orders GROUP BY 1 ORDER BY 1",
        "SELECT * FROM gold.daily_region_sales ORDER BY order_date, region",
        "SELECT * FROM gold.category_daily ORDER BY 1, 2, 3",
    ];
    checks
        .iter()
        .map(|sql| format!("{sql}\n{}", query(lake, None, sql)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The two lakes' fingerprints, line by line (a short message on failure).
fn assert_same(remote: &Path, local: &Path) {
    let (r, l) = (fingerprint(remote), fingerprint(local));
    let differ: Vec<(&str, &str)> = r
        .lines()
        .zip(l.lines())
        .filter(|(a, b)| a != b)
        .take(5)
        .collect();
    assert!(
        differ.is_empty() && r.lines().count() == l.lines().count(),
        "cluster vs local: {differ:?}"
    );
    assert!(l.lines().count() > 100, "too little to compare: {l}");
}

/// `lakehouse run` of the example on `lake`, on `cluster` if given.
fn run_args(lake: &Path, cluster: Option<&str>, extra: &[&str]) -> Vec<String> {
    let pipeline = repo().join("sql");
    run_args_with(&pipeline, lake, cluster, extra)
}

/// `lakehouse run` of `pipeline` on `lake`, on `cluster` if given.
fn run_args_with(
    pipeline: &Path,
    lake: &Path,
    cluster: Option<&str>,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--lake".into(),
        lake.to_str().unwrap().into(),
        "--pipeline".into(),
        pipeline.to_str().unwrap().into(),
    ];
    if let Some(c) = cluster {
        args.extend(["--cluster".into(), c.into()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn run(lake: &Path, cluster: Option<&str>, extra: &[&str]) -> String {
    let args = run_args(lake, cluster, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lakehouse(&args, lake.parent().unwrap());
    assert!(out.status.success(), "run on {cluster:?}: {}", text(&out));
    text(&out)
}

#[test]
fn the_pipeline_on_a_ballista_cluster_writes_the_same_tables_as_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged");
    gen::generate(
        &staged,
        &gen::Options {
            rows: 30_000,
            files: 4,
            days: 9,
            seed: 23,
            resend: 0.05,
            branch_rows: 3_000,
            ..Default::default()
        },
    )
    .unwrap();
    let local = dir.path().join("local");
    let remote = dir.path().join("remote");
    // The first run sees three order files; the fourth lands later.
    let orders = staged.join("landing/orders");
    let mut names: Vec<_> = std::fs::read_dir(&orders)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    // The last file with rows (the generator also writes an empty file and
    // a header-only one, which sort after it).
    let late = names
        .iter()
        .rfind(|n| n.to_string_lossy().starts_with("orders_0"))
        .cloned()
        .unwrap();
    let held = dir.path().join("held");
    std::fs::create_dir_all(&held).unwrap();
    std::fs::rename(orders.join(&late), held.join(&late)).unwrap();
    for lake in [&local, &remote] {
        crate::serve::copy_dir(&staged.join("landing"), &lake.join("landing"));
    }

    let (_scheduler, address) = scheduler(dir.path());
    let work = [dir.path().join("exec-a"), dir.path().join("exec-b")];
    let logs = [dir.path().join("exec-a.log"), dir.path().join("exec-b.log")];
    let _executors: Vec<Node> = work
        .iter()
        .zip(&logs)
        .map(|(w, log)| logged_executor(&address, w, dir.path(), log))
        .collect();

    run(&local, None, &[]);
    // On the cluster, files over 100 KB are parsed in pieces.
    let args = run_args(&remote, Some(&address), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = crate::lakehouse_with_env(
        &args,
        dir.path(),
        &[("LAKEHOUSE_INGEST_SPLIT_BYTES", "100000")],
    );
    let summary = text(&out);
    assert!(out.status.success(), "{summary}");
    assert!(summary.contains("silver.orders"), "{summary}");
    assert_same(&remote, &local);
    // Bronze was parsed by the executors' tasks, in pieces: the pieces of
    // each landed file named in their logs add up to its rows, each piece
    // once. (Ballista hands each task only its own partitions of the scans
    // it knows; a leaf of ours went whole to every task, and each file was
    // parsed once per task.)
    let parsed: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap())
        .collect();
    let bronze_files = query(
        &remote,
        None,
        "SELECT _source_file AS f, count(*) AS n FROM bronze.orders GROUP BY _source_file ORDER BY f",
    );
    let bronze_files: Vec<&str> = bronze_files.lines().skip(1).collect();
    assert_eq!(bronze_files.len(), 3, "{bronze_files:?}");
    for line in bronze_files {
        let (file, rows) = line.split_once(',').unwrap();
        let pieces: Vec<u64> = parsed
            .lines()
            .filter_map(|l| {
                let rest = l
                    .split_once(&format!("file parsed source=orders file={file} rows="))?
                    .1;
                rest.split(' ').next()?.parse().ok()
            })
            .collect();
        assert!(
            pieces.len() > 1,
            "{file} was not parsed in pieces:\n{parsed}"
        );
        assert_eq!(
            pieces.iter().sum::<u64>(),
            rows.parse::<u64>().unwrap(),
            "the pieces of {file} do not add up to its {rows} rows:\n{parsed}"
        );
    }
    // The pieces were grouped into a task per 256 MiB of landed bytes, at
    // least one per core of the driver, each writing one bronze file: not
    // a file per landed file or per piece (the run then compacted them).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bronze: Vec<_> = crate::files(&remote.join("bronze/orders"))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(
        !bronze.is_empty() && bronze.len() <= cores,
        "{} bronze files for {cores} cores: {bronze:?}",
        bronze.len()
    );
    assert!(!summary.contains("compacted"), "{summary}");
    // The runs' own counts agree too (rows in, written, quarantined,
    // duplicates), and reconcile.
    let steps = "SELECT step, status, rows_in, rows_written, rows_rejected, duplicates, reconciled FROM system.steps WHERE kind = 'model' ORDER BY step";
    assert_eq!(query(&remote, None, steps), query(&local, None, steps));
    assert!(query(&remote, None, steps).contains("silver.orders,succeeded,"));
    // The tables' files were written by the executors' tasks and committed
    // once per table by the driver: one Delta version per model.
    for w in &work {
        assert!(
            !crate::files(w).is_empty(),
            "executor {} ran no task",
            w.display()
        );
    }

    // A late file, then a full refresh: each equal to the local lake's.
    for lake in [&local, &remote] {
        std::fs::copy(held.join(&late), lake.join("landing/orders").join(&late)).unwrap();
    }
    // A job that outlives --stage-timeout (counted from when the scheduler
    // accepts it) is cancelled, and the model fails with nothing committed;
    // the next run does the work.
    let count = "SELECT count(*) AS n FROM silver.orders";
    let before = query(&remote, None, count);
    let args = run_args(&remote, Some(&address), &["--stage-timeout", "1ms"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lakehouse(&args, dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("did not finish within the stage timeout (1ms)"),
        "{t}"
    );
    assert!(
        t.contains("the job was cancelled. Nothing was committed"),
        "{t}"
    );
    assert_eq!(query(&remote, None, count), before);
    let local_run = run(&local, None, &[]);
    // silver.orders upserts the late file's rows on the cluster as it does
    // locally (three plans, run by the executors), with the same counts.
    let incremental = run(&remote, Some(&address), &[]);
    let upserted = |summary: &str| -> String {
        let line = crate::summary_line(summary, "silver.orders");
        let start = line.find("incremental");
        let end = line.find(" appended to");
        match (start, end) {
            (Some(s), Some(e)) if s < e => line[s..e].to_string(),
            _ => panic!("silver.orders did not upsert: {line}"),
        }
    };
    assert_eq!(upserted(&incremental), upserted(&local_run));
    assert!(
        !upserted(&incremental).contains(": 0 inserted, 0 updated"),
        "the late file's rows were upserted: {incremental}"
    );
    assert_same(&remote, &local);
    run(&local, None, &["--full-refresh"]);
    run(&remote, Some(&address), &["--full-refresh"]);
    assert_same(&remote, &local);
    // A re-run changes nothing on the cluster either.
    let again = run(&remote, Some(&address), &[]);
    assert!(again.contains("unchanged"), "{again}");

    // Backfills (--from/--to) run on the cluster too. A changed definition
    // applied to three days: those days change, the others keep their rows,
    // the same on both lakes. Then silver's backfill (deduplication, then
    // the range) rewrites its days with the same rows.
    let pipeline = dir.path().join("sql");
    crate::serve::copy_dir(&repo().join("sql"), &pipeline);
    let gold_sql = pipeline.join("gold/daily_region_sales.sql");
    let text_before = std::fs::read_to_string(&gold_sql).unwrap();
    let changed = text_before.replace("count(*) AS orders", "count(*) + 1000 AS orders");
    assert_ne!(
        changed, text_before,
        "the example's gold SQL changed: update this test"
    );
    std::fs::write(&gold_sql, changed).unwrap();
    let days = query(
        &local,
        None,
        "SELECT DISTINCT CAST(order_date AS VARCHAR) AS d FROM gold.daily_region_sales ORDER BY 1",
    );
    let days: Vec<&str> = days.lines().skip(1).collect();
    assert!(days.len() >= 6, "{days:?}");
    let (from, to) = (days[2], days[4]);
    let in_range = format!(
        "SELECT count(*) AS n FROM gold.daily_region_sales WHERE orders > 1000 AND order_date BETWEEN DATE '{from}' AND DATE '{to}'"
    );
    let outside = "SELECT count(*) AS n FROM gold.daily_region_sales WHERE orders > 1000";
    let before = query(&remote, None, &in_range);
    assert_eq!(before, query(&remote, None, outside));
    for (lake, cluster) in [(&local, None), (&remote, Some(address.as_str()))] {
        let args = run_args_with(
            &pipeline,
            lake,
            cluster,
            &[
                "--select",
                "gold.daily_region_sales",
                "--from",
                from,
                "--to",
                to,
            ],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lakehouse(&args, dir.path());
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            crate::summary_line(&text(&out), "gold.daily_region_sales")
                .contains(&format!("backfill ({from}..{to}): ")),
            "{}",
            text(&out)
        );
    }
    assert_same(&remote, &local);
    // Every region of the three days changed, and only those.
    let changed = query(&remote, None, &in_range);
    assert_ne!(changed, before, "the backfill changed nothing");
    assert_eq!(changed, query(&remote, None, outside));
    assert_eq!(
        changed,
        query(
            &remote,
            None,
            &format!("SELECT count(*) AS n FROM gold.daily_region_sales WHERE order_date BETWEEN DATE '{from}' AND DATE '{to}'")
        )
    );
    let silver = "SELECT order_id, amount, order_date, region FROM silver.orders ORDER BY 1";
    let silver_before = query(&remote, None, silver);
    let out = run(
        &remote,
        Some(&address),
        &["--select", "silver.orders", "--from", from, "--to", to],
    );
    let line = crate::summary_line(&out, "silver.orders");
    assert!(
        line.contains(&format!("backfill ({from}..{to}): ")),
        "{out}"
    );
    assert_eq!(query(&remote, None, silver), silver_before);
}

/// The run either completes with the local figures (Ballista runs the lost
/// tasks again) or fails with nothing committed and the next run
/// completes (after a restart of the scheduler when Ballista has stalled
/// it); a job that never finishes is cancelled at --stage-timeout (once,
/// under the full suite's load, the run waited on Ballista without a
/// bound). On 2026-11-27 the run completed after the kill in 7 of 7 runs
/// of this test alone; the stall was seen under the full suite's load.
#[test]
fn an_executor_killed_while_silver_stages_loses_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged");
    gen::generate(
        &staged,
        &gen::Options {
            rows: 60_000,
            files: 6,
            days: 8,
            seed: 31,
            ..Default::default()
        },
    )
    .unwrap();
    let local = dir.path().join("local");
    let remote = dir.path().join("remote");
    for lake in [&local, &remote] {
        crate::serve::copy_dir(&staged.join("landing"), &lake.join("landing"));
    }
    run(&local, None, &[]);

    let scheduler = || {
        let mut child = node(
            &[
                "scheduler",
                "--bind",
                "127.0.0.1:0",
                "--executor-timeout",
                "10s",
            ],
            dir.path(),
        );
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (
            Node(child),
            line.trim().rsplit(' ').next().unwrap().to_string(),
        )
    };
    let (scheduler_node, address) = scheduler();
    let (wa, wb) = (dir.path().join("exec-a"), dir.path().join("exec-b"));
    let a = executor(&address, &wa, dir.path());
    let mut b = Some(executor(&address, &wb, dir.path()));

    let mut job = Command::new(env!("CARGO_BIN_EXE_lakehouse"))
        .args(run_args(
            &remote,
            Some(&address),
            &["--stage-timeout", "60s"],
        ))
        .current_dir(dir.path())
        .env("RUST_LOG", "lakehouse=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = job.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l.clone());
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    // Wait for silver.orders to start staging and for executor B to hold
    // some of its work, then kill B.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut planning = false;
    while std::time::Instant::now() < deadline && !planning {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            planning = l.contains("planning") && l.contains("silver.orders");
        }
    }
    assert!(planning, "silver.orders never started");
    while std::time::Instant::now() < deadline && crate::files(&wb).is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed_with_work = !crate::files(&wb).is_empty();
    drop(b.take()); // SIGKILL
    let status = job.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut job.stdout.take().unwrap(), &mut out).unwrap();
    let log = reader.join().unwrap();
    let why = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "executor killed {} shuffle output; the run {}",
        if killed_with_work {
            "holding"
        } else {
            "before any"
        },
        if status.success() {
            "completed".to_string()
        } else {
            format!("failed ({why})")
        }
    );
    if !status.success() {
        // Nothing of silver or gold was committed by the failed run, and
        // it failed for the lost work (or the stage timeout), not another
        // reason.
        let silver = query(&remote, None, "SELECT count(*) AS n FROM silver.orders");
        assert_eq!(silver, "n\n0\n", "{out}{log}");
        // The next run, on the executor left, completes the work. Ballista
        // 55 sometimes never reruns a lost executor's tasks, and then
        // stalls the next job on that scheduler too: that run also fails
        // at its stage timeout with nothing committed, and after a restart
        // of the scheduler and its executor (what the README tells an
        // operator to do) the run completes.
        let args = run_args(&remote, Some(&address), &["--stage-timeout", "60s"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let again = lakehouse(&args, dir.path());
        if !again.status.success() {
            let why = text(&again);
            eprintln!("the re-run on the same scheduler failed too; restarting it: {why}");
            assert!(why.contains("stage-timeout"), "{why}");
            let silver = query(&remote, None, "SELECT count(*) AS n FROM silver.orders");
            assert_eq!(silver, "n\n0\n", "{why}");
            drop((a, scheduler_node));
            let (_scheduler, address) = scheduler();
            let _a = executor(&address, &wa, dir.path());
            run(&remote, Some(&address), &["--stage-timeout", "120s"]);
        }
    }
    assert_same(&remote, &local);
}
