//! The reconciliation identities on generated dirty data at 1M order rows:
//! lines landed = bronze + rejected, and bronze = silver + quarantined +
//! duplicates, checked from the tables themselves.

use crate::{gen, lakehouse, one, repo, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_holds_on_one_million_dirty_rows() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let opts = gen::Options {
        rows: 1_000_000,
        files: 5,
        days: 60,
        seed: 3,
        branch_rows: 50_000,
        ..Default::default()
    };
    gen::generate(&lake, &opts).unwrap();
    let pipeline = repo().join("sql");
    let out = lakehouse(
        &[
            "run",
            "--lake",
            lake.to_str().unwrap(),
            "--pipeline",
            pipeline.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));

    let bronze = one(
        &lake,
        "SELECT (SELECT count(*) FROM bronze.orders) + (SELECT count(*) FROM bronze.branch_orders)",
    )
    .await;
    let rejected = one(&lake, "SELECT (SELECT count(*) FROM quarantine.bronze_orders) + (SELECT count(*) FROM quarantine.bronze_branch_orders)").await;
    let landed = one(&lake, "SELECT sum(lines_landed) FROM system.steps WHERE step IN ('bronze.orders', 'bronze.branch_orders')").await;
    assert_eq!(
        landed,
        1_050_000 + 1,
        "every generated line (and the repeated header) was read"
    );
    assert_eq!(landed, bronze + rejected);

    let silver = one(&lake, "SELECT count(*) FROM silver.orders").await;
    let quarantined = one(&lake, "SELECT count(*) FROM quarantine.silver_orders").await;
    let duplicates = one(
        &lake,
        "SELECT duplicates FROM system.steps WHERE step = 'silver.orders'",
    )
    .await;
    assert_eq!(bronze, silver + quarantined + duplicates);
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) - count(DISTINCT order_id) FROM silver.orders"
        )
        .await,
        0
    );
    assert!(
        quarantined > 25_000 && duplicates > 40_000,
        "dirty enough: {quarantined} quarantined, {duplicates} duplicates"
    );
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) FROM system.steps WHERE NOT reconciled"
        )
        .await,
        0
    );
    // Gold sums equal the sums over silver.
    assert_eq!(
        one(&lake, "SELECT sum(orders) FROM gold.daily_region_sales").await,
        silver
    );
    assert_eq!(
        one(&lake, "SELECT CAST(sum(revenue) * 100 AS BIGINT) FROM gold.daily_region_sales").await,
        one(&lake, "SELECT CAST(sum(amount) * 100 AS BIGINT) FROM silver.orders WHERE status = 'completed'").await
    );

    // Encodings: every table has dictionaries except for text whose values
    // nearly all differ (order_id here) and line numbers.
    let bronze_file = largest_parquet(&lake.join("bronze/orders"));
    let bronze_dictionaries = dictionary_columns(&bronze_file);
    for column in ["store_id", "status", "_source_file", "_run_id"] {
        assert!(
            bronze_dictionaries.contains(&column.to_string()),
            "{bronze_file:?}: {column} in {bronze_dictionaries:?}"
        );
    }
    for column in ["order_id", "order_ts", "_source_line"] {
        assert!(
            !bronze_dictionaries.contains(&column.to_string()),
            "{bronze_file:?}: {column} not in {bronze_dictionaries:?}"
        );
    }
    let silver_file = largest_parquet(&lake.join("silver/orders"));
    let silver_dictionaries = dictionary_columns(&silver_file);
    assert!(
        !silver_dictionaries.contains(&"order_id".to_string())
            && silver_dictionaries.contains(&"status".to_string())
            && silver_dictionaries.contains(&"category".to_string()),
        "{silver_file:?}: {silver_dictionaries:?}"
    );
}

/// The biggest Parquet file under `dir` (a full first batch decided its
/// encodings).
fn largest_parquet(dir: &std::path::Path) -> std::path::PathBuf {
    crate::files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a Parquet file")
}

/// The columns of `file`'s first row group written with a dictionary page.
fn dictionary_columns(file: &std::path::Path) -> Vec<String> {
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
    let group = reader.metadata().row_group(0);
    group
        .columns()
        .iter()
        .filter(|c| c.dictionary_page_offset().is_some())
        .map(|c| c.column_path().string())
        .collect()
}

/// A memory limit too small for the model's deduplication (1 MB: the
/// writers spill rather than fail, so 5 MB is enough for silver's 200,000
/// rows) ends in a clear error that names the operators holding memory and
/// says what to change, and the model commits nothing (never an
/// out-of-memory kill, never a partial table).
#[test]
fn a_memory_limit_too_small_names_the_operators_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    gen::generate(
        &lake,
        &gen::Options {
            rows: 200_000,
            files: 2,
            days: 20,
            seed: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let pipeline = repo().join("sql");
    let run = |limit: &str, more: &[&str]| {
        let mut args = vec![
            "--memory-limit",
            limit,
            "run",
            "--lake",
            lake.to_str().unwrap(),
            "--pipeline",
            pipeline.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        lakehouse(&args, dir.path())
    };
    let out = run("1M", &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("error: model silver.orders: "), "{t}");
    assert!(t.contains("top memory consumers"), "{t}");
    assert!(
        t.contains("Additional allocation failed for LatestPerKey["),
        "{t}"
    );
    assert!(
        t.contains("run with a larger --memory-limit (or LAKEHOUSE_MEMORY_LIMIT)"),
        "{t}"
    );
    // Bronze was taken; silver has no data commit.
    let parquet = std::fs::read_dir(lake.join("silver/orders"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('_'))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(parquet, 0, "{t}");
    // 5 MB is enough for silver: its writers spill their rows rather than
    // fail (the sort they replaced failed under 40 MB), and every row is
    // accounted for. (The two gold models, aggregating side by side, may
    // need a little more.)
    let out = run("5M", &["--select", "silver.orders"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let line = crate::summary_line(&t, "silver.orders");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [rows_in, written, quarantined, duplicates] = numbers[..] else {
        panic!("{line}");
    };
    assert!(written > 150_000, "{line}");
    assert_eq!(rows_in, written + quarantined + duplicates, "{line}");
}
