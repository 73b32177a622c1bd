//! Compaction after runs, `lakehouse optimize` and `lakehouse vacuum` on a
//! real lake: figures never change, incremental runs keep working across a
//! compaction, a concurrent commit makes a stale optimize fail instead of
//! resurrecting rows, and vacuum deletes only what no version needs.

use std::path::Path;

use crate::{lakehouse, one, text};

fn setup(root: &Path, threshold: Option<usize>) {
    let settings = match threshold {
        Some(n) => format!(
            "mode = \"append\"\npartition_by = [\"day\"]\nincremental_inputs = [\"bronze.events\"]\ncompact_small_files = {n}\n"
        ),
        None => "mode = \"append\"\npartition_by = [\"day\"]\nincremental_inputs = [\"bronze.events\"]\n"
            .to_string(),
    };
    crate::pipeline_cli::setup(
        root,
        "id,day,v,updated\n",
        &[
            (
                "bronze/events.toml",
                "files = \"landing/events_*.csv\"\ncolumns = [\"id\", \"day\", \"v\"]\n",
            ),
            (
                "silver/e.sql",
                "SELECT CAST(id AS BIGINT) AS id, CAST(day AS DATE) AS day, CAST(v AS BIGINT) AS v FROM bronze.events\n",
            ),
            ("silver/e.toml", &settings),
        ],
    );
    std::fs::remove_file(root.join("lake/landing/events_1.csv")).unwrap();
}

/// Lands file `i` (rows of varying count and width) and runs; returns the
/// summary. The rows' sum of `v` is added to `total`.
fn land_and_run(root: &Path, i: usize, total: &mut i64, rows: &mut i64) -> String {
    let mut body = String::from("id,day,v\n");
    for r in 0..(i % 3 + 1) {
        let v = (i * 1000 + r * 7) as i64;
        body.push_str(&format!(
            "{},{},{v}\n",
            i * 10 + r,
            if r % 2 == 0 {
                "2025-01-01"
            } else {
                "2025-01-02"
            }
        ));
        *total += v;
        *rows += 1;
    }
    std::fs::write(root.join(format!("lake/landing/events_{i:03}.csv")), body).unwrap();
    let out = lakehouse(&["run", "--lake", "lake", "--pipeline", "sql"], root);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn files(lake: &Path, table: &str) -> (u64, usize) {
    let url = url::Url::from_directory_path(lake.join(table)).unwrap();
    let t = lakehouse::delta::open(&url, &Default::default())
        .await
        .unwrap()
        .unwrap();
    let (_, files, _) = lakehouse::delta::row_count(&t).await.unwrap();
    (t.version().unwrap(), files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_compact_fragmented_partitions_and_stay_incremental() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root, Some(3));
    let lake = root.join("lake");
    let (mut total, mut rows) = (0i64, 0i64);
    let mut compactions = 0;
    for i in 1..=10 {
        let s = land_and_run(root, i, &mut total, &mut rows);
        if i > 1 {
            assert!(
                crate::summary_line(&s, "silver.e").contains("incremental (1 new input file)"),
                "run {i} after a compaction must stay incremental: {s}"
            );
        }
        if s.contains("maintenance: silver.e: compacted") {
            compactions += 1;
        }
        assert_eq!(
            one(&lake, "SELECT sum(v) FROM silver.e").await,
            total,
            "run {i}"
        );
        assert_eq!(
            one(&lake, "SELECT count(*) FROM silver.e").await,
            rows,
            "run {i}"
        );
    }
    assert!(
        compactions >= 1,
        "no compaction in 7 runs with a threshold of 3"
    );
    let (_, n) = files(&lake, "silver/e").await;
    assert!(
        n <= 2 * 4,
        "{n} files in 2 partitions with a threshold of 3"
    );
    // The compaction is an OPTIMIZE commit, marked as the run's maintenance.
    let url = url::Url::from_directory_path(lake.join("silver/e")).unwrap();
    let t = lakehouse::delta::open(&url, &Default::default())
        .await
        .unwrap()
        .unwrap();
    let history: Vec<deltalake::kernel::CommitInfo> =
        futures::TryStreamExt::try_collect(t.history(None))
            .await
            .unwrap();
    let optimized: Vec<_> = history
        .iter()
        .filter(|c| c.operation.as_deref() == Some("OPTIMIZE"))
        .collect();
    assert_eq!(optimized.len(), compactions, "{history:?}");
    assert_eq!(
        optimized[0].info.get("lakehouse.operation"),
        Some(&serde_json::json!("optimize"))
    );
    let again = lakehouse(&["run", "--lake", "lake", "--pipeline", "sql"], root);
    let s = text(&again);
    assert!(s.contains("nothing new, no table changed"), "{s}");

    // compact_small_files = 0 turns it off.
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), Some(0));
    let (mut t, mut r) = (0, 0);
    for i in 1..=5 {
        let s = land_and_run(dir.path(), i, &mut t, &mut r);
        assert!(!s.contains("maintenance:"), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_and_vacuum_keep_every_figure_and_version_in_retention() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root, Some(0));
    let lake = root.join("lake");
    let (mut total, mut rows) = (0i64, 0i64);
    for i in 1..=4 {
        land_and_run(root, i, &mut total, &mut rows);
    }
    let (before, n_before) = files(&lake, "silver/e").await;
    let total_at_before = total;
    assert_eq!(
        n_before, 7,
        "the appends left one file per partition per run"
    );

    // Only the filtered partition, one commit.
    let out = lakehouse(
        &[
            "optimize",
            "--lake",
            "lake",
            "silver.e",
            "--where",
            "day = '2025-01-01'",
        ],
        root,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("silver.e: 4 files"))
            && text(&out).contains(&format!("version {before} -> {}", before + 1)),
        "{}",
        text(&out)
    );
    let (v, n) = files(&lake, "silver/e").await;
    assert_eq!((v, n), (before + 1, 4));
    assert_eq!(one(&lake, "SELECT sum(v) FROM silver.e").await, total);
    // Time travel to the version before still reads its own files.
    assert_eq!(
        one(&lake, &format!("SELECT sum(v) FROM silver.\"e@v{before}\"")).await,
        total
    );

    // Every table: those without a `day` partition are left alone; the rest
    // compacted; a second optimize finds nothing to do.
    let out = lakehouse(&["optimize", "--lake", "lake"], root);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("bronze.events: 4 files"),
        "{}",
        text(&out)
    );
    let out = lakehouse(&["optimize", "--lake", "lake", "silver.e"], root);
    assert!(
        text(&out).contains("silver.e: already compact"),
        "{}",
        text(&out)
    );
    let bad = lakehouse(
        &[
            "optimize",
            "--lake",
            "lake",
            "silver.e",
            "--where",
            "region = 'x'",
        ],
        root,
    );
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("`region` is not one of its partition columns (day)"),
        "{}",
        text(&bad)
    );
    let bad = lakehouse(
        &["optimize", "--lake", "lake", "--where", "day = 2025"],
        root,
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).contains("values are quoted"), "{}", text(&bad));

    // The next run is still incremental, and exact.
    let s = land_and_run(root, 5, &mut total, &mut rows);
    assert!(
        crate::summary_line(&s, "silver.e").contains("incremental (1 new input file)"),
        "{s}"
    );
    assert_eq!(one(&lake, "SELECT sum(v) FROM silver.e").await, total);

    // Vacuum: an orphan a killed run left two days ago goes; files replaced
    // minutes ago stay (a version within the retention needs them).
    let orphan = lake.join("silver/e/day=2025-01-01/part-orphan-of-a-killed-run.parquet");
    std::fs::write(&orphan, vec![7u8; 3_000]).unwrap();
    let two_days_ago = (chrono::Local::now() - chrono::Duration::days(2))
        .format("%Y%m%d%H%M")
        .to_string();
    let touched = std::process::Command::new("touch")
        .args(["-t", &two_days_ago])
        .arg(&orphan)
        .status()
        .unwrap();
    assert!(touched.success());
    let short = lakehouse(&["vacuum", "--lake", "lake", "--retain", "30m"], root);
    assert_eq!(short.status.code(), Some(2));
    assert!(
        text(&short).contains("keeps at least 1h"),
        "{}",
        text(&short)
    );

    let dry = lakehouse(
        &[
            "vacuum",
            "--lake",
            "lake",
            "silver.e",
            "--retain",
            "1d",
            "--dry-run",
        ],
        root,
    );
    assert!(dry.status.success(), "{}", text(&dry));
    let t = text(&dry);
    assert!(
        t.contains("silver.e: would delete day=2025-01-01/part-orphan-of-a-killed-run.parquet"),
        "{t}"
    );
    assert!(t.contains("silver.e: would delete 1 file (2.9 KiB)"), "{t}");
    assert!(orphan.exists(), "a dry run deletes nothing");

    let parquet_before = crate::data_files(&lake.join("silver/e"));
    let out = lakehouse(&["vacuum", "--lake", "lake", "--retain", "1d"], root);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("silver.e: deleted 1 file (2.9 KiB)"),
        "{}",
        text(&out)
    );
    assert!(!orphan.exists());
    assert_eq!(
        crate::data_files(&lake.join("silver/e")),
        parquet_before - 1
    );
    assert_eq!(one(&lake, "SELECT sum(v) FROM silver.e").await, total);
    assert_eq!(
        one(&lake, &format!("SELECT sum(v) FROM silver.\"e@v{before}\"")).await,
        total_at_before,
        "a version within the retention still reads"
    );
}

/// An optimize planned on a snapshot that a run then replaced fails its
/// commit (Delta's optimistic concurrency), and no row comes back twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optimize_racing_a_run_fails_instead_of_duplicating_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root, Some(0));
    let lake = root.join("lake");
    let (mut total, mut rows) = (0i64, 0i64);
    for i in 1..=3 {
        land_and_run(root, i, &mut total, &mut rows);
    }
    let url = url::Url::from_directory_path(lake.join("silver/e")).unwrap();
    let stale = lakehouse::delta::open(&url, &Default::default())
        .await
        .unwrap()
        .unwrap();
    // Meanwhile a run rebuilds the table, removing every file.
    let out = lakehouse(
        &[
            "run",
            "--lake",
            "lake",
            "--pipeline",
            "sql",
            "--full-refresh",
        ],
        root,
    );
    assert!(out.status.success(), "{}", text(&out));
    let result = stale.optimize().await;
    assert!(result.is_err(), "the stale optimize committed");
    assert_eq!(one(&lake, "SELECT sum(v) FROM silver.e").await, total);
    assert_eq!(one(&lake, "SELECT count(*) FROM silver.e").await, rows);
}

/// Shifts every timestamp of a table's Delta log, and its files' mtimes,
/// `days` into the past: history as if it had been written then.
fn age_table(table: &Path, days: i64) {
    let shift = days * 24 * 3600 * 1000;
    let log = table.join("_delta_log");
    for e in std::fs::read_dir(&log).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let mut out = String::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            for (action, field) in [
                ("commitInfo", "timestamp"),
                ("remove", "deletionTimestamp"),
                ("add", "modificationTime"),
            ] {
                if let Some(t) = v[action][field].as_i64() {
                    v[action][field] = serde_json::json!(t - shift);
                }
            }
            out.push_str(&v.to_string());
            out.push('\n');
        }
        std::fs::write(&p, out).unwrap();
    }
    let then = (chrono::Local::now() - chrono::Duration::days(days))
        .format("%Y%m%d%H%M")
        .to_string();
    let mut stack = vec![table.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && !p.ends_with("_delta_log") {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                assert!(std::process::Command::new("touch")
                    .args(["-t", &then])
                    .arg(&p)
                    .status()
                    .unwrap()
                    .success());
            }
        }
    }
}

/// After a vacuum deleted an old version's files, reading that version
/// says so (and which vacuum), instead of failing on a missing file; the
/// current version and versions within the retention still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_past_a_vacuum_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup(root, Some(0));
    let lake = root.join("lake");
    let (mut total, mut rows) = (0i64, 0i64);
    for i in 1..=3 {
        land_and_run(root, i, &mut total, &mut rows);
    }
    let (old, _) = files(&lake, "silver/e").await;
    let out = lakehouse(
        &[
            "run",
            "--lake",
            "lake",
            "--pipeline",
            "sql",
            "--full-refresh",
        ],
        root,
    );
    assert!(out.status.success(), "{}", text(&out));
    let (rebuilt, _) = files(&lake, "silver/e").await;
    assert_eq!(rebuilt, old + 1);
    // Before any vacuum the old version reads.
    assert_eq!(
        one(&lake, &format!("SELECT sum(v) FROM silver.\"e@v{old}\"")).await,
        total
    );

    age_table(&lake.join("silver/e"), 3);
    let out = lakehouse(
        &["vacuum", "--lake", "lake", "silver.e", "--retain", "1d"],
        root,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("silver.e: deleted 5 files"),
        "{}",
        text(&out)
    );

    let q = lakehouse(
        &[
            "query",
            "--lake",
            "lake",
            &format!("SELECT sum(v) FROM silver.\"e@v{old}\""),
        ],
        root,
    );
    assert_eq!(q.status.code(), Some(2), "{}", text(&q));
    assert!(
        text(&q).contains(&format!("version {old} can no longer be read: a vacuum at"))
            && text(&q).contains("kept 1day of history"),
        "{}",
        text(&q)
    );
    assert_eq!(one(&lake, "SELECT sum(v) FROM silver.e").await, total);
    assert_eq!(
        one(
            &lake,
            &format!("SELECT sum(v) FROM silver.\"e@v{rebuilt}\"")
        )
        .await,
        total
    );
}
