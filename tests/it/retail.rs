//! The example pipeline on generated dirty data: every figure of
//! retail-pipeline.md against an independent computation, the same figures
//! through DuckDB, polars and delta-rs python, and a second run that ingests
//! nothing and changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use crate::expected::{compute, Expected};
use crate::{gen, ints, lakehouse, one, python, repo, strings, text};

pub(crate) async fn assert_figures(lake: &Path, e: &Expected) {
    assert_eq!(
        one(lake, "SELECT count(*) FROM bronze.orders").await as u64,
        e.bronze_rows,
        "bronze.orders rows"
    );
    assert_eq!(
        one(lake, "SELECT count(*) FROM quarantine.bronze_orders").await as u64,
        e.bronze_rejects,
        "bronze rejects"
    );
    assert_eq!(
        one(lake, "SELECT count(*) FROM bronze.branch_orders").await as u64,
        e.branch_bronze_rows,
        "bronze.branch_orders rows"
    );
    assert_eq!(
        one(lake, "SELECT count(*) FROM quarantine.bronze_branch_orders").await as u64,
        e.branch_rejects,
        "branch rejects"
    );
    assert_eq!(
        e.bronze_rows + e.bronze_rejects + e.branch_bronze_rows + e.branch_rejects,
        e.landed_rows
    );

    let by_reason: BTreeMap<String, u64> = strings(
        lake,
        "SELECT _reason, CAST(count(*) AS VARCHAR) FROM quarantine.silver_orders GROUP BY 1",
    )
    .await
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap()))
    .collect();
    assert_eq!(by_reason, e.quarantine, "quarantine rows by reason");

    let silver = ints(lake, "SELECT count(*), CAST(sum(amount) * 100 AS BIGINT), count(DISTINCT order_id) FROM silver.orders").await;
    assert_eq!(silver[0][0] as u64, e.silver_rows, "silver.orders rows");
    assert_eq!(
        silver[0][1] as i128, e.silver_amount_cents,
        "silver.orders sum(amount)"
    );
    assert_eq!(silver[0][2] as u64, e.silver_rows, "one row per order_id");
    let quarantined: u64 = e.quarantine.values().sum();
    assert_eq!(
        e.bronze_rows + e.branch_bronze_rows,
        e.silver_rows + quarantined + e.duplicates,
        "bronze = silver + quarantine + duplicates"
    );
    // The branch's extra column is kept in bronze.
    assert_eq!(
        one(
            lake,
            "SELECT count(*) FROM bronze.branch_orders WHERE channel IN ('store', 'web', 'phone')"
        )
        .await as u64,
        e.branch_bronze_rows
    );

    // gold.daily_region_sales, row by row.
    let rows = strings(
        lake,
        "SELECT CAST(order_date AS VARCHAR), region, CAST(orders AS VARCHAR), CAST(units AS VARCHAR), CAST(CAST(revenue * 100 AS BIGINT) AS VARCHAR), CAST(returns AS VARCHAR), CAST(avg_order_value AS VARCHAR) FROM gold.daily_region_sales",
    )
    .await;
    assert_eq!(rows.len(), e.daily.len(), "gold.daily_region_sales rows");
    for r in &rows {
        let d = &e.daily[&(r[0].clone(), r[1].clone())];
        assert_eq!(r[2].parse::<i64>().unwrap(), d.orders, "orders {r:?}");
        assert_eq!(r[3].parse::<i64>().unwrap(), d.units, "units {r:?}");
        assert_eq!(
            r[4].parse::<i128>().unwrap(),
            d.revenue_cents,
            "revenue {r:?}"
        );
        assert_eq!(r[5].parse::<i64>().unwrap(), d.returns, "returns {r:?}");
        if d.completed == 0 {
            assert_eq!(
                r[6], "NULL",
                "avg_order_value with no completed order {r:?}"
            );
        } else {
            let want = d.revenue_cents as f64 / 100.0 / d.completed as f64;
            let got: f64 = r[6].parse().unwrap();
            assert!(
                (got - want).abs() <= 0.005 + 1e-9,
                "avg_order_value {r:?}: want {want}"
            );
        }
    }
    // Gold sums equal the sums over silver.
    let g = ints(
        lake,
        "SELECT sum(orders), CAST(sum(revenue) * 100 AS BIGINT) FROM gold.daily_region_sales",
    )
    .await;
    assert_eq!(g[0][0] as u64, e.silver_rows);
    assert_eq!(
        g[0][1] as i128,
        e.daily.values().map(|d| d.revenue_cents).sum::<i128>()
    );

    let cats = strings(lake, "SELECT CAST(order_date AS VARCHAR), region, coalesce(category, ''), CAST(CAST(revenue * 100 AS BIGINT) AS VARCHAR), CAST(units AS VARCHAR) FROM gold.category_daily").await;
    assert_eq!(cats.len(), e.category.len(), "gold.category_daily rows");
    for r in &cats {
        let want = e.category[&(r[0].clone(), r[1].clone(), r[2].clone())];
        assert_eq!(
            (r[3].parse::<i128>().unwrap(), r[4].parse::<i64>().unwrap()),
            want,
            "category_daily {r:?}"
        );
    }
}

async fn versions(lake: &Path) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for t in [
        "bronze/orders",
        "silver/orders",
        "gold/daily_region_sales",
        "gold/category_daily",
        "quarantine/silver_orders",
    ] {
        let url = url::Url::from_directory_path(lake.join(t)).unwrap();
        let table = lakehouse::delta::open(&url, &Default::default())
            .await
            .unwrap()
            .expect(t);
        out.push(vec![t.to_string(), format!("{:?}", table.version())]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_pipeline_matches_an_independent_computation_and_reruns_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let opts = gen::Options {
        rows: 30_000,
        files: 6,
        days: 20,
        seed: 11,
        branch_rows: 3_000,
        ..Default::default()
    };
    gen::generate(&lake, &opts).unwrap();
    let expected = compute(&lake);
    assert!(
        expected.bronze_rejects > 0
            && expected.duplicates > 0
            && expected.quarantine.len() == 6
            && expected.branch_bronze_rows > 2_000,
        "the generated data is dirty in every way: {expected:?}"
    );

    let pipeline = repo().join("sql");
    let args = [
        "run",
        "--lake",
        lake.to_str().unwrap(),
        "--pipeline",
        pipeline.to_str().unwrap(),
    ];
    let first = lakehouse(&args, dir.path());
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("succeeded"), "{}", text(&first));
    assert_figures(&lake, &expected).await;
    readers_agree(&lake, &expected);
    // Duplicates are counted where they collapse, and equal the oracle's;
    // a model without unique_key collapses none.
    assert_eq!(
        one(
            &lake,
            "SELECT duplicates FROM system.steps WHERE step = 'silver.orders'"
        )
        .await as u64,
        expected.duplicates
    );
    assert_eq!(
        one(
            &lake,
            "SELECT max(duplicates) FROM system.steps WHERE step LIKE 'gold.%'"
        )
        .await,
        0
    );

    let before = versions(&lake).await;
    let second = lakehouse(&args, dir.path());
    assert!(second.status.success(), "{}", text(&second));
    let out = text(&second);
    assert!(out.contains("no new files (8 seen)"), "{out}");
    assert!(out.contains("no new files (1 seen)"), "{out}");
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(versions(&lake).await, before, "a re-run commits nothing");
    assert_figures(&lake, &expected).await;

    // Both runs are recorded, queryable with SQL: the no-op re-run as
    // `unchanged`, with no steps.
    assert!(out.contains("nothing new, no table changed"), "{out}");
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) FROM system.runs WHERE status = 'succeeded'"
        )
        .await,
        1
    );
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) FROM system.runs WHERE status = 'unchanged'"
        )
        .await,
        1
    );
    assert_eq!(
        one(&lake, "SELECT count(DISTINCT run_id) FROM system.steps").await,
        1
    );
    let q = one(
        &lake,
        "SELECT sum(quarantined) FROM system.expectations WHERE model = 'silver.orders'",
    )
    .await as u64;
    assert_eq!(q, expected.quarantine.values().sum::<u64>());

    // Optimize and vacuum every table: the same figures, through the job
    // and through DuckDB, polars and delta-rs python.
    let lake_arg = lake.to_str().unwrap();
    let optimized = lakehouse(&["optimize", "--lake", lake_arg], dir.path());
    assert!(optimized.status.success(), "{}", text(&optimized));
    assert!(
        text(&optimized).contains("bronze.orders: "),
        "{}",
        text(&optimized)
    );
    let vacuumed = lakehouse(
        &["vacuum", "--lake", lake_arg, "--retain", "1h"],
        dir.path(),
    );
    assert!(vacuumed.status.success(), "{}", text(&vacuumed));
    assert_figures(&lake, &expected).await;
    readers_agree(&lake, &expected);
}

fn readers_agree(lake: &Path, e: &Expected) {
    if std::env::var("LAKEHOUSE_SKIP_READERS").is_ok() {
        eprintln!("LAKEHOUSE_SKIP_READERS is set: not checking DuckDB, polars and deltalake");
        return;
    }
    let out = std::process::Command::new(python())
        .arg(repo().join("scripts/check_readers.py"))
        .arg(lake)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "the Python readers failed (run scripts/setup to install them, or set LAKEHOUSE_SKIP_READERS=1):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cents = |c: i128| format!("{}.{:02}", c / 100, c % 100);
    let revenue: i128 = e.daily.values().map(|d| d.revenue_cents).sum();
    let cat_revenue: i128 = e.category.values().map(|c| c.0).sum();
    for reader in ["deltalake", "polars", "duckdb"] {
        let r = &v[reader];
        assert_eq!(r["silver_rows"], e.silver_rows, "{reader}: {r}");
        assert_eq!(
            r["silver_amount"],
            cents(e.silver_amount_cents),
            "{reader}: {r}"
        );
        assert_eq!(r["daily_rows"], e.daily.len(), "{reader}: {r}");
        assert_eq!(r["daily_orders"], e.silver_rows, "{reader}: {r}");
        assert_eq!(r["daily_revenue"], cents(revenue), "{reader}: {r}");
        assert_eq!(r["category_rows"], e.category.len(), "{reader}: {r}");
        assert_eq!(r["category_revenue"], cents(cat_revenue), "{reader}: {r}");
    }
    assert_eq!(v["deltalake"]["types"]["order_ts"], "timestamp[us, tz=UTC]");
    assert_eq!(v["deltalake"]["types"]["order_date"], "date32[day]");
    assert_eq!(v["deltalake"]["types"]["amount"], "decimal128(14, 2)");
}
