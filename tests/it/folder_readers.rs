//! Tools that read a table's Parquet files without the Delta log. After an
//! incremental run the table folder holds replaced files too, so a glob
//! over-counts; the symlink manifests name exactly the live files, and
//! DuckDB and pyarrow reading exactly them give the Delta figures.

use std::path::Path;
use std::process::Command;

use crate::{gen, lakehouse, python, repo, strings, text};

fn run(lake: &Path, pipeline: &Path) {
    let out = lakehouse(
        &[
            "run",
            "--lake",
            lake.to_str().unwrap(),
            "--pipeline",
            pipeline.to_str().unwrap(),
        ],
        lake.parent().unwrap(),
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// For each table: [rows, sum(revenue), rows of region 'east'] read by DuckDB
/// over the manifest's files, the same by pyarrow, and DuckDB's row count
/// over every Parquet file in the folder.
const READ: &str = r#"
import json, sys, pathlib
import duckdb, pyarrow.dataset as ds, pyarrow.compute as pc
out = {}
for table in sys.argv[1:]:
    root = pathlib.Path(table)
    manifests = sorted(root.glob("_symlink_format_manifest/**/manifest"))
    files = []
    for m in manifests:
        for line in m.read_text().splitlines():
            assert line.startswith("file://"), line
            files.append(line[len("file://"):])
    for f in files:
        assert pathlib.Path(f).is_file(), f"manifest names a missing file: {f}"
    con = duckdb.connect()
    rows, revenue, east = con.execute(
        "SELECT count(*), CAST(sum(revenue) AS VARCHAR), count(*) FILTER (WHERE region = 'east') "
        "FROM read_parquet(?, hive_partitioning = true)", [files]).fetchone()
    d = ds.dataset(files, format="parquet", partitioning="hive")
    t = d.to_table()
    pa_east = t.filter(pc.equal(t["region"], "east")).num_rows
    glob_rows = con.execute(
        f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet')").fetchone()[0]
    out[root.name] = {
        "manifests": len(manifests),
        "files": len(files),
        "duckdb": [str(rows), revenue, str(east)],
        "pyarrow": [str(t.num_rows), str(pc.sum(t["revenue"]).as_py()), str(pa_east)],
        "glob_rows": glob_rows,
    }
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_give_folder_readers_the_delta_figures_after_an_incremental_run() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged");
    gen::generate(
        &staged,
        &gen::Options {
            rows: 30_000,
            files: 4,
            days: 12,
            seed: 5,
            resend: 0.2,
            ..Default::default()
        },
    )
    .unwrap();
    let lake = dir.path().join("lake");
    let landing = lake.join("landing");
    crate::serve::copy_dir(&staged.join("landing"), &landing);
    // First run with half the order files, the second with the rest: gold
    // partitions are replaced, their old files stay in the folder.
    let orders = landing.join("orders");
    let held = dir.path().join("held");
    std::fs::create_dir_all(&held).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&orders)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in &names[names.len() / 2..] {
        std::fs::rename(orders.join(n), held.join(n)).unwrap();
    }
    let pipeline = repo().join("sql");
    run(&lake, &pipeline);
    for n in &names[names.len() / 2..] {
        std::fs::rename(held.join(n), orders.join(n)).unwrap();
    }
    run(&lake, &pipeline);

    let tables = ["daily_region_sales", "category_daily"];
    let out = Command::new(python())
        .arg("-c")
        .arg(READ)
        .args(tables.iter().map(|t| lake.join("gold").join(t)))
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", text(&out));
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    for t in tables {
        let delta = strings(
            &lake,
            &format!(
                "SELECT CAST(count(*) AS VARCHAR), CAST(sum(revenue) AS VARCHAR), \
                 CAST(count(*) FILTER (WHERE region = 'east') AS VARCHAR) FROM gold.{t}"
            ),
        )
        .await
        .remove(0);
        let partitions = strings(
            &lake,
            &format!(
                "SELECT CAST(count(*) AS VARCHAR) FROM \
                 (SELECT DISTINCT order_date, region FROM gold.{t})"
            ),
        )
        .await[0][0]
            .parse::<u64>()
            .unwrap();
        let r = &read[t];
        let as_strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            as_strings(&r["duckdb"]),
            delta,
            "{t}: DuckDB over the manifest"
        );
        assert_eq!(
            as_strings(&r["pyarrow"]),
            delta,
            "{t}: pyarrow over the manifest"
        );
        assert_eq!(r["manifests"].as_u64().unwrap(), partitions, "{t}");
        // The folder really holds replaced files: a glob over-counts.
        let rows: u64 = delta[0].parse().unwrap();
        assert!(
            r["glob_rows"].as_u64().unwrap() > rows,
            "{t}: the second run replaced no partition, so this test proves nothing: {r}"
        );
    }

    // `lakehouse manifest` rewrites them from scratch: a deleted manifest
    // comes back, a stale one is removed.
    let folder = lake.join("gold/daily_region_sales/_symlink_format_manifest");
    let stale = folder.join("order_date=1999-01-01/region=nowhere");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("manifest"), "file:///nowhere.parquet\n").unwrap();
    let first = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.ends_with("order_date=1999-01-01"))
        .unwrap();
    std::fs::remove_dir_all(&first).unwrap();
    let out = lakehouse(
        &[
            "manifest",
            "--lake",
            lake.to_str().unwrap(),
            "gold.daily_region_sales",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(first.exists(), "the deleted manifest was not rewritten");
    assert!(
        !stale.join("manifest").exists(),
        "the stale manifest stayed"
    );
    assert!(
        text(&out).contains("manifests for version"),
        "{}",
        text(&out)
    );
}
