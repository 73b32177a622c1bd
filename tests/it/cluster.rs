//! The same binary as an Apache DataFusion Ballista cluster: a scheduler and
//! two executors as real processes on loopback, answering the same SQL as a
//! local session, value for value, with the work done on the executors.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{gen, lakehouse, repo, text};

/// A node process, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(args: &[&str], cwd: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lakehouse"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the lakehouse binary starts")
}

/// A scheduler on a free port, and its `df://` address.
fn scheduler(cwd: &Path) -> (Node, String) {
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
    Node(node(
        &[
            "executor",
            "--scheduler",
            scheduler,
            "--slots",
            "2",
            "--work-dir",
            work_dir.to_str().unwrap(),
        ],
        cwd,
    ))
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

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
        .sum()
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
        assert!(files_under(w) > 0, "executor {} ran no task", w.display());
    }

    // In-process cluster, for trying it on one machine.
    assert_eq!(
        query(&lake, Some("standalone"), QUERIES[0]),
        query(&lake, None, QUERIES[0])
    );

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
