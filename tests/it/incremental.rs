//! Incremental runs: files landing in batches (re-sent orders crossing
//! batches, late rows for old dates, an order moving to another day, a stale
//! update arriving last) end with exactly the figures of one full run, while
//! silver reads only the new files and gold recomputes only the partitions
//! the new silver rows touched.

use std::path::Path;

use crate::expected::compute;
use crate::{gen, lakehouse, repo, strings, text};

fn run(lake: &Path, extra: &[&str]) -> String {
    let pipeline = lake.parent().unwrap().join("sql");
    let mut args = vec![
        "run",
        "--lake",
        lake.to_str().unwrap(),
        "--pipeline",
        pipeline.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = lakehouse(&args, lake.parent().unwrap());
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

fn land(from: &Path, lake: &Path, files: &[&str]) {
    for f in files {
        let to = lake.join("landing").join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from.join("landing").join(f), &to).unwrap();
    }
}

/// The generated branch exports, as names under landing/.
fn branch_files(staged: &Path) -> Vec<String> {
    std::fs::read_dir(staged.join("landing/branch_orders"))
        .unwrap()
        .map(|e| format!("branch_orders/{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

/// Everything a user would compare: gold in full, silver's keys and sums,
/// the quarantine by reason.
async fn figures(lake: &Path) -> Vec<Vec<Vec<String>>> {
    let mut out = vec![];
    for q in [
        "SELECT * FROM gold.daily_region_sales ORDER BY order_date, region",
        "SELECT * FROM gold.category_daily ORDER BY order_date, region, category",
        "SELECT order_id, order_date, region, status, CAST(amount AS VARCHAR), CAST(updated_at AS VARCHAR) FROM silver.orders ORDER BY order_id",
        "SELECT _reason, count(*) FROM quarantine.silver_orders GROUP BY 1 ORDER BY 1",
    ] {
        out.push(strings(lake, q).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_files_end_with_the_figures_of_one_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged");
    gen::generate(
        &staged,
        &gen::Options {
            rows: 40_000,
            files: 6,
            days: 20,
            seed: 17,
            resend: 0.15,
            branch_rows: 3_000,
            ..Default::default()
        },
    )
    .unwrap();
    let branch = branch_files(&staged);

    // A hand-made last file: order A moves to another day (a later update),
    // order B gets a stale update (older updated_at: it must lose), and a
    // new order lands for the first day (late data).
    let first = std::fs::read_to_string(staged.join("landing/orders/orders_00001.csv")).unwrap();
    let rows: Vec<Vec<&str>> = first
        .lines()
        .skip(1)
        .map(|l| l.trim_start_matches('\u{feff}').split(',').collect())
        .filter(|r: &Vec<&str>| {
            r.len() == 9
                && r[0].starts_with('O')
                && r[1].len() == 19
                && r[2].len() == 19
                && r[3..6].iter().all(|f| !f.trim().is_empty())
                && r[6].parse::<i32>().is_ok_and(|q| q > 0)
                && r[7].parse::<f64>().is_ok_and(|p| p >= 0.0)
        })
        .take(2)
        .collect();
    assert_ne!(rows[0][0], rows[1][0]);
    assert_eq!(
        rows.len(),
        2,
        "the generator's first rows have changed shape"
    );
    let (a, b) = (&rows[0], &rows[1]);
    let late = format!(
        "order_id,order_ts,updated_at,customer_id,store_id,product_id,quantity,unit_price,status\n\
         {},2030-01-05T10:00:00,2030-01-06T00:00:00,{},{},{},{},{},completed\n\
         {},{},2000-01-01T00:00:00,{},{},{},999,1.00,returned\n\
         OLATE0001,{},2030-01-01T00:00:00,C000001,{},{},3,10.00,completed\n",
        a[0], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[3], b[4], b[5], a[1], a[4], a[5],
    );
    std::fs::write(staged.join("landing/orders/orders_99999.csv"), late).unwrap();

    // The example pipeline, with stores taken from every landing/stores*.csv.
    crate::serve::copy_dir(&repo().join("sql"), &dir.path().join("sql"));
    let stores = dir.path().join("sql/bronze/stores.toml");
    let settings = std::fs::read_to_string(&stores).unwrap();
    std::fs::write(
        &stores,
        settings.replace("landing/stores.csv", "landing/stores*.csv"),
    )
    .unwrap();

    let lake = dir.path().join("lake");
    land(
        &staged,
        &lake,
        &[
            "stores.csv",
            "products.csv",
            "orders/orders_00001.csv",
            "orders/orders_00002.csv",
        ],
    );
    let s = run(&lake, &[]);
    assert!(
        crate::summary_line(&s, "silver.orders").contains("full (first run)"),
        "{s}"
    );

    land(
        &staged,
        &lake,
        &["orders/orders_00003.csv", "orders/orders_00004.csv"],
    );
    let branch_refs: Vec<&str> = branch.iter().map(|s| s.as_str()).collect();
    land(&staged, &lake, &branch_refs);
    // The new input files are the bronze data files this run adds (one
    // per parser that took a landed file: up to one per core).
    let bronze_files = || {
        crate::data_files(&lake.join("bronze/orders"))
            + crate::data_files(&lake.join("bronze/branch_orders"))
    };
    let before = bronze_files();
    let s = run(&lake, &[]);
    let added = bronze_files() - before;
    assert!((2..=3).contains(&added), "{added} new bronze files: {s}");
    assert!(
        crate::summary_line(&s, "silver.orders")
            .contains(&format!("incremental ({added} new input files)")),
        "{s}"
    );
    // The new files spread over all 20 days: every gold partition changed,
    // and filtering every scan to all of them costs more than a full run.
    assert!(
        crate::summary_line(&s, "gold.daily_region_sales")
            .contains("full (100 of its 100 partitions changed)"),
        "{s}"
    );

    land(
        &staged,
        &lake,
        &["orders/orders_00005.csv", "orders/orders_00006.csv"],
    );
    let before = bronze_files();
    let s = run(&lake, &[]);
    let added = bronze_files() - before;
    let said = if added == 1 {
        "incremental (1 new input file)".to_string()
    } else {
        format!("incremental ({added} new input files)")
    };
    assert!((1..=2).contains(&added), "{added} new bronze files: {s}");
    assert!(
        crate::summary_line(&s, "silver.orders").contains(&said),
        "{s}"
    );

    // The hand-made file alone: gold recomputes the partitions its rows
    // touch (A's old and new day, B's day if its file was rewritten, the
    // late order's day), not the 100 the lake has.
    land(&staged, &lake, &["orders/orders_99999.csv"]);
    let s = run(&lake, &[]);
    // Silver upserts: the late order is new, A's update wins and moves it,
    // B's stale update loses; only A's old partition is rewritten (the late
    // order lands there too) and A's new day gains a file.
    assert!(
        crate::summary_line(&s, "silver.orders")
            .contains("1 inserted, 1 updated, 1 stale; 1 partition rewritten, 1 appended to"),
        "{s}"
    );
    // The offered rows were staged in a scratch folder, which the upsert
    // removed after its commit.
    assert!(
        crate::files(&lake.join("_lakehouse_scratch")).is_empty(),
        "{:?}",
        crate::files(&lake.join("_lakehouse_scratch"))
    );
    let gold = crate::summary_line(&s, "gold.daily_region_sales");
    let parts: usize = gold
        .split("incremental (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("gold did not run incrementally: {s}"));
    assert!(
        (2..=4).contains(&parts),
        "{parts} partitions recomputed: {s}"
    );

    let moved = strings(
        &lake,
        &format!("SELECT CAST(order_date AS VARCHAR), CAST(updated_at AS VARCHAR) FROM silver.orders WHERE order_id = '{}'", a[0]),
    )
    .await;
    assert_eq!(
        moved,
        vec![vec![
            "2030-01-05".to_string(),
            "2030-01-06T00:00:00Z".to_string()
        ]]
    );
    let stale = strings(
        &lake,
        &format!(
            "SELECT status FROM silver.orders WHERE order_id = '{}' AND quantity = 999",
            b[0]
        ),
    )
    .await;
    assert!(stale.is_empty(), "a stale update must lose: {stale:?}");

    // The independent implementation over all landed files agrees.
    crate::retail::assert_figures(&lake, &compute(&lake)).await;

    // So does one full run over the same files in a fresh lake.
    let fresh = dir.path().join("fresh");
    land(&staged, &fresh, &["stores.csv", "products.csv"]);
    let mut all: Vec<String> = (1..=6)
        .map(|n| format!("orders/orders_{n:05}.csv"))
        .collect();
    all.push("orders/orders_99999.csv".into());
    all.extend(branch.iter().cloned());
    let all: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    land(&staged, &fresh, &all);
    run(&fresh, &[]);
    let incremental = figures(&lake).await;
    assert_eq!(
        incremental,
        figures(&fresh).await,
        "incremental runs = one full run"
    );

    // Nothing new: nothing runs, nothing is committed.
    let s = run(&lake, &[]);
    assert!(s.contains("nothing new, no table changed"), "{s}");

    // A full refresh rebuilds from bronze to the same figures.
    let s = run(&lake, &["--full-refresh"]);
    assert!(
        crate::summary_line(&s, "silver.orders").contains("full (--full-refresh)"),
        "{s}"
    );
    assert_eq!(figures(&lake).await, incremental);

    // A new stores file is not a stream input of silver: silver is rebuilt.
    std::fs::write(
        lake.join("landing/stores_extra.csv"),
        "store_id,store_name,region,opened_on\nSX01,Store X1,north,2020-01-01\n",
    )
    .unwrap();
    let s = run(&lake, &[]);
    assert!(
        crate::summary_line(&s, "silver.orders").contains("full (bronze.stores changed)"),
        "{s}"
    );
    assert_eq!(
        figures(&lake).await,
        incremental,
        "a store no order uses changes nothing"
    );
}

/// `--from/--to` recompute a date range with the models as they are now and
/// replace exactly those date partitions; every other partition keeps its
/// files, and the next run still takes what changed since the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_replaces_exactly_the_date_range() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged");
    gen::generate(
        &staged,
        &gen::Options {
            rows: 6_000,
            files: 3,
            days: 10,
            seed: 5,
            branch_rows: 500,
            ..Default::default()
        },
    )
    .unwrap();
    let branch = branch_files(&staged);
    crate::serve::copy_dir(&repo().join("sql"), &dir.path().join("sql"));
    let lake = dir.path().join("lake");
    land(
        &staged,
        &lake,
        &[
            "stores.csv",
            "products.csv",
            "orders/orders_00001.csv",
            "orders/orders_00002.csv",
        ],
    );
    land(
        &staged,
        &lake,
        &branch.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    run(&lake, &[]);
    let gold = "SELECT CAST(order_date AS VARCHAR), region, orders FROM gold.daily_region_sales ORDER BY 1, 2";
    let before = strings(&lake, gold).await;
    let days: Vec<String> = {
        let mut d: Vec<String> = before.iter().map(|r| r[0].clone()).collect();
        d.dedup();
        d
    };
    assert_eq!(days.len(), 10, "{days:?}");
    let (from, to) = (days[3].clone(), days[5].clone());
    let in_range = |d: &str| d >= from.as_str() && d <= to.as_str();

    // A changed definition, applied to three days only.
    let sql = dir.path().join("sql/gold/daily_region_sales.sql");
    let text_before = std::fs::read_to_string(&sql).unwrap();
    std::fs::write(
        &sql,
        text_before.replace("count(*) AS orders", "count(*) + 1000 AS orders"),
    )
    .unwrap();
    let s = run(
        &lake,
        &[
            "--select",
            "gold.daily_region_sales",
            "--from",
            &from,
            "--to",
            &to,
        ],
    );
    assert!(
        crate::summary_line(&s, "gold.daily_region_sales")
            .contains(&format!("backfill ({from}..{to}): 15 partitions")),
        "{s}"
    );
    let how = strings(
        &lake,
        "SELECT message FROM system.steps WHERE step = 'gold.daily_region_sales' ORDER BY version",
    )
    .await;
    assert_eq!(how.len(), 2, "{how:?}");
    assert_eq!(how[0][0], "full (first run)");
    assert_eq!(
        how[1][0],
        format!("backfill ({from}..{to}): 15 partitions, 15 rows")
    );
    let after = strings(&lake, gold).await;
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        let old: i64 = b[2].parse().unwrap();
        let new: i64 = a[2].parse().unwrap();
        let want = if in_range(&b[0]) { old + 1000 } else { old };
        assert_eq!((&a[0], &a[1], new), (&b[0], &b[1], want), "{b:?} -> {a:?}");
    }
    // Its one commit removed the range's files only and added theirs.
    let log = lake.join("gold/daily_region_sales/_delta_log");
    let mut commits: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    let last = std::fs::read_to_string(commits.last().unwrap()).unwrap();
    let count = |kind: &str| {
        last.lines()
            .filter(|l| l.starts_with(&format!("{{\"{kind}\"")))
            .count()
    };
    assert_eq!((count("remove"), count("add")), (15, 15), "{last}");
    assert!(
        last.contains(&format!("{from}")) && !last.contains(&format!("order_date={}", days[0])),
        "{last}"
    );

    // Nothing changed since: the next run leaves gold alone.
    let s = run(&lake, &[]);
    assert!(s.contains("nothing new, no table changed"), "{s}");
    assert_eq!(strings(&lake, gold).await, after);

    // New data after a backfill: the next run takes it (incrementally, with
    // the model as it is now), and silver still equals the independent
    // implementation.
    land(&staged, &lake, &["orders/orders_00003.csv"]);
    let s = run(&lake, &[]);
    assert!(
        crate::summary_line(&s, "silver.orders").contains("incremental (1 new input file)"),
        "{s}"
    );
    let silver_before = strings(&lake, "SELECT order_id, CAST(amount AS VARCHAR), CAST(order_date AS VARCHAR) FROM silver.orders ORDER BY 1").await;

    // A silver backfill recomputes the same rows: same figures, and the
    // quarantine is left as it was.
    let quarantine = "SELECT _reason, count(*) FROM quarantine.silver_orders GROUP BY 1 ORDER BY 1";
    let q_before = strings(&lake, quarantine).await;
    let s = run(
        &lake,
        &["--select", "silver.orders", "--from", &from, "--to", &to],
    );
    assert!(
        crate::summary_line(&s, "silver.orders").contains("backfill ("),
        "{s}"
    );
    assert_eq!(
        strings(&lake, "SELECT order_id, CAST(amount AS VARCHAR), CAST(order_date AS VARCHAR) FROM silver.orders ORDER BY 1").await,
        silver_before
    );
    assert_eq!(strings(&lake, quarantine).await, q_before);
    std::fs::write(&sql, text_before).unwrap();
    let s = run(&lake, &["--full-refresh"]);
    assert!(
        crate::summary_line(&s, "gold.daily_region_sales").contains("full (--full-refresh)"),
        "{s}"
    );
    crate::retail::assert_figures(&lake, &compute(&lake)).await;

    // Bad ranges are refused before anything runs.
    let pipeline = dir.path().join("sql");
    let out = lakehouse(
        &[
            "run",
            "--lake",
            lake.to_str().unwrap(),
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--from",
            "2025-03-10",
            "--to",
            "2025-03-01",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--from 2025-03-10 is after --to 2025-03-01"),
        "{}",
        text(&out)
    );
    let out = lakehouse(
        &[
            "run",
            "--lake",
            lake.to_str().unwrap(),
            "--from",
            "03/01/2025",
        ],
        dir.path(),
    );
    assert!(
        text(&out).contains("is not a date like 2025-03-01"),
        "{}",
        text(&out)
    );
}
