//! Write modes: merge by key keeps the latest row across runs; replacing
//! partitions leaves the other partitions' files untouched.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use lakehouse::delta::{self, Replace, WriteSpec};

use crate::pipeline_cli::{setup, SOURCE};
use crate::{lakehouse, strings, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_by_key_keeps_the_latest_row_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,10,5\n2,d1,20,5\n2,d1,21,6\n",
        &[
            ("bronze/events.toml", SOURCE),
            ("silver/e.sql", "SELECT id, day, CAST(v AS INT) AS v, CAST(updated AS INT) AS updated, _source_file, _source_line FROM bronze.events"),
            ("silver/e.toml", "mode = \"merge\"\nunique_key = [\"id\"]\nsequence_by = [\"updated\", \"_source_file\", \"_source_line\"]\npartition_by = [\"day\"]\n"),
        ],
    );
    let run = || lakehouse(&["run", "--lake", "lake", "--pipeline", "sql"], dir.path());
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    let lake = dir.path().join("lake");
    let q =
        "SELECT CAST(id AS VARCHAR) AS id, day, CAST(v AS VARCHAR) AS v FROM silver.e ORDER BY id";
    assert_eq!(
        strings(&lake, q).await,
        vec![vec!["1", "d1", "10"], vec!["2", "d1", "21"]]
    );

    // A later file: id 1 newer (and moves to another day), id 2 older (ignored), id 3 new.
    std::fs::write(
        lake.join("landing/events_2.csv"),
        "id,day,v,updated\n1,d2,11,9\n2,d1,99,1\n3,d2,30,1\n",
    )
    .unwrap();
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        strings(&lake, q).await,
        vec![
            vec!["1", "d2", "11"],
            vec!["2", "d1", "21"],
            vec!["3", "d2", "30"]
        ]
    );
}

fn batch(rows: &[(&str, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("day", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn files_of(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in crate::files(dir) {
        if entry.extension().is_some_and(|e| e == "parquet") {
            out.push(
                entry
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_partitions_leaves_other_partitions_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let url = url::Url::from_directory_path(&root).unwrap();
    let spec = WriteSpec {
        table_name: "t".into(),
        partition_by: vec!["day".into()],
        // No partitions named: exactly the partitions written are replaced.
        replace: Replace::Partitions(Default::default()),
        transactions: vec![],
        metadata: HashMap::new(),
        description: None,
        symlink_manifest: false,
        upsert: None,
    };
    let write = |rows: Vec<(&'static str, i64)>| {
        let url = url.clone();
        let spec = spec.clone();
        async move {
            let b = batch(&rows);
            let table = delta::ensure_table(&url, &HashMap::new(), &b.schema(), &spec)
                .await
                .unwrap();
            let stream = Box::pin(RecordBatchStreamAdapter::new(
                b.schema(),
                futures::stream::iter(vec![Ok(b)]),
            ));
            delta::write(table, vec![stream], &spec).await.unwrap().1
        }
    };
    let w = write(vec![("d1", 1), ("d1", 2), ("d2", 3)]).await;
    assert_eq!((w.files_added, w.files_removed, w.partitions), (2, 0, 2));
    let d1_files: Vec<String> = files_of(&root)
        .into_iter()
        .filter(|f| f.starts_with("day=d1"))
        .collect();

    let w = write(vec![("d2", 30), ("d3", 40)]).await;
    assert_eq!((w.files_added, w.files_removed, w.partitions), (2, 1, 2));

    let table = delta::open(&url, &HashMap::new()).await.unwrap().unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let rows = ctx
        .sql("SELECT day, v FROM t ORDER BY day, v")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("| d") && !l.contains("day"))
            .map(|l| l.replace(' ', ""))
            .collect::<Vec<_>>(),
        vec!["|d1|1|", "|d1|2|", "|d2|30|", "|d3|40|"]
    );
    // d1's file is the very same file as before.
    let (rows, files, _) = delta::row_count(&table).await.unwrap();
    assert_eq!((rows, files), (4, 3));
    let active: Vec<String> = table.get_file_uris().unwrap().collect();
    for f in &d1_files {
        assert!(
            active.iter().any(|a| a.ends_with(f.as_str())),
            "{f} is still active: {active:?}"
        );
    }
}

/// A lake under `root` whose first landed file is `landing`, and a pipeline
/// with one incremental merge model, `silver.e`, keyed by `id`, sequenced
/// by `updated`, partitioned by `day`.
fn merge_pipeline(root: &std::path::Path, landing: &str) {
    merge_pipeline_with_day(root, landing, "day");
}

/// [`merge_pipeline`] with `day` computed by `day` (an SQL expression).
fn merge_pipeline_with_day(root: &std::path::Path, landing: &str, day: &str) {
    let sql = format!("SELECT id, {day} AS day, CAST(v AS INT) AS v, CAST(updated AS INT) AS updated, _ingested_at, _source_file, _source_line FROM bronze.events");
    setup(
        root,
        landing,
        &[
            ("bronze/events.toml", SOURCE),
            ("silver/e.sql", &sql),
            ("silver/e.toml", "mode = \"merge\"\nunique_key = [\"id\"]\nsequence_by = [\"updated\", \"_ingested_at\", \"_source_file\", \"_source_line\"]\nincremental_inputs = [\"bronze.events\"]\npartition_by = [\"day\"]\n"),
        ],
    );
}

/// `id`, `day` (NULL when empty) and `v` of each row of a landed CSV.
fn landed_rows(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let day = if f[1].is_empty() { "NULL" } else { f[1] };
            vec![f[0].to_string(), day.to_string(), f[2].to_string()]
        })
        .collect()
}

/// The merge pipelines' table `silver.e`, opened at its latest version.
async fn silver_e(lake: &std::path::Path) -> deltalake::DeltaTable {
    delta::open(
        &url::Url::from_directory_path(lake.join("silver/e")).unwrap(),
        &HashMap::new(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// Lands `file` and runs the pipeline with the model's debug log: the
/// summary line of `silver.e`, and what follows `field` in the first log
/// line that holds `marker`.
fn run_logged(
    root: &std::path::Path,
    file: &str,
    body: &str,
    marker: &str,
    field: &str,
) -> (String, Option<String>) {
    std::fs::write(root.join("lake/landing").join(file), body).unwrap();
    let out = crate::lakehouse_with_env(
        &["run", "--lake", "lake", "--pipeline", "sql"],
        root,
        &[("RUST_LOG", "warn,lakehouse::model=debug")],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let line = all
        .lines()
        .find(|l| l.starts_with("silver.e "))
        .unwrap_or_default()
        .to_string();
    let logged = all
        .lines()
        .find(|l| l.contains(marker))
        .map(|l| l[l.find(field).unwrap()..].to_string());
    (line, logged)
}

/// [`run_logged`] for the upsert's rewrite: the summary line of `silver.e`
/// and which way the rewrite went (`in_order=… partitions=…`).
fn run_in_order(root: &std::path::Path, file: &str, body: &str) -> (String, Option<String>) {
    run_logged(
        root,
        file,
        body,
        "the rewrite keeps partition order",
        "in_order=",
    )
}

/// An incremental merge appends a file to a partition that only gains rows,
/// rewrites a partition that loses a row to an update, and compacts a
/// partition into one file once it has 8; every step keeps the latest row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_merge_appends_rewrites_and_compacts_partitions() {
    let dir = tempfile::tempdir().unwrap();
    merge_pipeline(dir.path(), "id,day,v,updated\n1,d1,10,1\n");
    let lake = dir.path().join("lake");
    let run = |file: &str, body: &str| {
        std::fs::write(lake.join("landing").join(file), body).unwrap();
        let out = lakehouse(&["run", "--lake", "lake", "--pipeline", "sql"], dir.path());
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
            .lines()
            .find(|l| l.starts_with("silver.e "))
            .unwrap_or_default()
            .to_string()
    };
    let files_in = |day: &str| {
        std::fs::read_dir(lake.join("silver/e").join(format!("day={day}")))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let live_files = || async { delta::row_count(&silver_e(&lake).await).await.unwrap() };
    run("events_1.csv", "id,day,v,updated\n1,d1,10,1\n");
    for n in 2..=8 {
        let line = run(
            &format!("events_{n}.csv"),
            &format!("id,day,v,updated\n{n},d1,{n},1\n"),
        );
        assert!(
            line.contains("1 inserted, 0 updated, 0 stale; 0 partitions rewritten, 1 appended to"),
            "{line}"
        );
    }
    assert_eq!(live_files().await.0, 8);
    assert_eq!(live_files().await.1, 8, "one file per append");
    // The ninth insert finds 8 files: the partition is rewritten into one.
    let line = run("events_9.csv", "id,day,v,updated\n9,d1,9,1\n");
    assert!(
        line.contains("1 partition rewritten, 0 appended to"),
        "{line}"
    );
    assert_eq!(live_files().await, (9, 1, live_files().await.2));
    assert!(
        files_in("d1") >= 9,
        "old files stay on disk for time travel"
    );

    // An update (newer), a tie (the later file wins), a stale one (loses),
    // and a key moving to d2: d1 is rewritten, d2 gains a file.
    let line = run(
        "events_10.csv",
        "id,day,v,updated\n3,d1,33,2\n4,d1,44,1\n5,d1,55,0\n6,d2,66,5\n",
    );
    assert!(
        line.contains("0 inserted, 3 updated, 1 stale; 1 partition rewritten, 1 appended to"),
        "{line}"
    );
    let q =
        "SELECT CAST(id AS VARCHAR) AS id, day, CAST(v AS VARCHAR) AS v FROM silver.e ORDER BY id";
    let want: Vec<Vec<String>> = [
        ("1", "d1", "10"),
        ("2", "d1", "2"),
        ("3", "d1", "33"),
        ("4", "d1", "44"),
        ("5", "d1", "5"),
        ("6", "d2", "66"),
        ("7", "d1", "7"),
        ("8", "d1", "8"),
        ("9", "d1", "9"),
    ]
    .iter()
    .map(|(a, b, c)| vec![a.to_string(), b.to_string(), c.to_string()])
    .collect();
    assert_eq!(strings(&lake, q).await, want);
    assert_eq!(live_files().await.0, 9);

    // Delta's history says what happened: a MERGE on the key that
    // rewrote d1, not a WRITE that overwrote something unnamed.
    let log = lake.join("silver/e/_delta_log");
    let mut commits: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let last = std::fs::read_to_string(commits.last().unwrap()).unwrap();
    let info: serde_json::Value = last
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find_map(|v| v.get("commitInfo").cloned())
        .unwrap();
    assert_eq!(info["operation"], "MERGE", "{info}");
    let params = &info["operationParameters"];
    assert_eq!(params["mergePredicate"], "source.id = target.id", "{info}");
    assert_eq!(params["predicate"], "(day = 'd1')", "{info}");
    assert!(
        params["matchedPredicates"]
            .to_string()
            .contains("(source.updated) >= (target.updated)"),
        "{info}"
    );
    // The first run's commit was a plain overwrite of the whole table.
    let first = std::fs::read_to_string(&commits[1]).unwrap();
    assert!(first.contains("\"operation\":\"WRITE\""), "{first}");
}

/// An incremental merge reads only the stored files whose key range (the
/// Delta log's statistics) holds an offered key, and still finds every
/// stored row of an offered key: an update and a stale row in files it
/// keeps, new keys between and beyond the files' ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_merge_reads_only_files_whose_key_range_holds_an_offered_key() {
    let dir = tempfile::tempdir().unwrap();
    // Keys of different lengths: text order, not length, decides.
    let mut first = String::from("id,day,v,updated\n");
    for (day, keys) in [
        ("d1", ["k1", "k10", "k105", "k11"]),
        ("d2", ["k2", "k20", "k205", "k21"]),
        ("d3", ["k3", "k30", "k303", "k31"]),
    ] {
        for k in keys {
            first.push_str(&format!("{k},{day},1,5\n"));
        }
    }
    merge_pipeline(dir.path(), &first);
    let lake = dir.path().join("lake");
    let run = |file: &str, body: &str| {
        run_logged(
            dir.path(),
            file,
            body,
            "stored files whose key range holds an offered key",
            "files=",
        )
    };
    let (line, skipping) = run("events_1.csv", &first);
    assert!(line.contains("full"), "{line}");
    assert_eq!(skipping, None, "a first run reads no stored keys");

    // k205 (in d2's file) is updated, k303 (in d3's) is stale; k15 lies
    // between d1's range [k1, k11] and d2's [k2, k21]; k9 beyond all.
    let (line, skipping) = run(
        "events_2.csv",
        "id,day,v,updated\nk205,d2,2,6\nk303,d3,2,4\nk15,d1,2,5\nk9,d4,2,5\n",
    );
    assert_eq!(skipping.as_deref(), Some("files=2 of=3"), "{line}");
    assert!(
        line.contains("2 inserted, 1 updated, 1 stale; 1 partition rewritten, 2 appended to"),
        "{line}"
    );
    // Only keys beyond every stored range: no stored file is read.
    let (line, skipping) = run("events_3.csv", "id,day,v,updated\nk99,d2,3,5\n");
    assert_eq!(skipping.as_deref(), Some("files=0 of=5"), "{line}");
    assert!(
        line.contains("1 inserted, 0 updated, 0 stale; 0 partitions rewritten, 1 appended to"),
        "{line}"
    );
    let q = "SELECT id, day, CAST(v AS VARCHAR) AS v FROM silver.e ORDER BY id";
    let got = strings(&lake, q).await;
    let mut want = landed_rows(&first);
    for (k, day, v) in [
        ("k205", "d2", "2"),
        ("k15", "d1", "2"),
        ("k9", "d4", "2"),
        ("k99", "d2", "3"),
    ] {
        want.retain(|r| r[0] != k);
        want.push(vec![k.into(), day.into(), v.into()]);
    }
    want.sort();
    assert_eq!(got, want);
}

/// A small offer rewrites its partitions without sorting the stored rows:
/// each task reads whole partitions in partition order, and the writers
/// still write one file per rewritten partition, however many files it
/// had, with exactly the latest row per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_merge_rewrites_partitions_in_order_one_file_each() {
    let dir = tempfile::tempdir().unwrap();
    let days = ["d1", "d2", "d3", "d4", "d5", "d6"];
    let mut first = String::from("id,day,v,updated\n");
    for (i, day) in days.iter().enumerate() {
        for j in 0..(3 + i * 7) {
            first.push_str(&format!("k{i}_{j},{day},1,5\n"));
        }
    }
    // Rows with no day: the NULL partition, which sorts first.
    first.push_str("kn_0,,1,5\nkn_1,,1,5\n");
    // An empty day is read as NULL.
    merge_pipeline_with_day(dir.path(), &first, "NULLIF(day, '')");
    let lake = dir.path().join("lake");
    let run = |file: &str, body: &str| run_in_order(dir.path(), file, body);
    run("events_1.csv", &first);
    // Two appends give every partition three files.
    for n in 2..=3 {
        let body: String = std::iter::once("id,day,v,updated\n".to_string())
            .chain(days.iter().map(|d| format!("new{n}_{d},{d},{n},5\n")))
            .collect();
        let (line, _) = run(&format!("events_{n}.csv"), &body);
        assert!(
            line.contains("6 inserted, 0 updated, 0 stale; 0 partitions rewritten, 6 appended to"),
            "{line}"
        );
    }
    // An update in each of d1..d5 (d5's key moves to d1) and in the NULL
    // partition, inserts into d6 and a new d7.
    let (line, order) = run(
        "events_4.csv",
        "id,day,v,updated\nk0_1,d1,9,6\nk1_0,d2,9,6\nnew2_d3,d3,9,6\nk3_9,d4,9,6\nk4_2,d1,9,6\nx6,d6,9,5\nx7,d7,9,5\nkn_0,,9,6\n",
    );
    assert!(
        line.contains("2 inserted, 6 updated, 0 stale; 6 partitions rewritten, 2 appended to"),
        "{line}"
    );
    assert_eq!(
        order.as_deref(),
        Some("in_order=true partitions=6"),
        "{line}"
    );
    let files: HashMap<String, (u64, usize)> = delta::partition_stats(&silver_e(&lake).await)
        .await
        .unwrap()
        .into_iter()
        .map(|(values, rows, files, _)| {
            let day = values[0].clone().unwrap_or_else(|| "NULL".into());
            (day, (rows, files))
        })
        .collect();
    // Stored rows: 3, 10, 17, 24, 31 and 38, plus two appended each.
    let want: HashMap<String, (u64, usize)> = [
        ("d1", (5 + 1, 1)),
        ("d2", (12, 1)),
        ("d3", (19, 1)),
        ("d4", (26, 1)),
        ("d5", (33 - 1, 1)),
        ("d6", (40 + 1, 4)),
        ("d7", (1, 1)),
        ("NULL", (2, 1)),
    ]
    .into_iter()
    .map(|(d, v)| (d.to_string(), v))
    .collect();
    assert_eq!(files, want);
    let q = "SELECT id, day, CAST(v AS VARCHAR) AS v FROM silver.e ORDER BY id";
    let got = strings(&lake, q).await;
    let mut rows = landed_rows(&first);
    for n in 2..=3 {
        for d in days {
            rows.push(vec![format!("new{n}_{d}"), d.to_string(), n.to_string()]);
        }
    }
    for (k, day) in [
        ("k0_1", "d1"),
        ("k1_0", "d2"),
        ("new2_d3", "d3"),
        ("k3_9", "d4"),
        ("k4_2", "d1"),
        ("x6", "d6"),
        ("x7", "d7"),
        ("kn_0", "NULL"),
    ] {
        rows.retain(|r| r[0] != k);
        rows.push(vec![k.into(), day.into(), "9".into()]);
    }
    rows.sort();
    assert_eq!(got, rows);
}

/// A merge batch too large to hold in memory under `--memory-limit` is not
/// upserted incrementally (its join would build on it) but rebuilt in full,
/// which streams; the rows are the same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_batch_too_large_for_the_memory_limit_runs_in_full() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,10,1\n2,d1,20,1\n",
        &[
            ("bronze/events.toml", SOURCE),
            ("silver/e.sql", "SELECT id, day, CAST(v AS INT) AS v, CAST(updated AS INT) AS updated, _ingested_at, _source_file, _source_line FROM bronze.events"),
            ("silver/e.toml", "mode = \"merge\"\nunique_key = [\"id\"]\nsequence_by = [\"updated\", \"_ingested_at\", \"_source_file\", \"_source_line\"]\nincremental_inputs = [\"bronze.events\"]\npartition_by = [\"day\"]\n"),
        ],
    );
    let lake = dir.path().join("lake");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--lake", "lake", "--pipeline", "sql"];
        args.extend_from_slice(extra);
        let out = lakehouse(&args, dir.path());
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    run(&[]);
    // 650,000 rows with long ids that do not compress: over 32 MB of
    // Parquet, more than a 256 MB limit lets an upsert hold (its build side).
    let id = |i: u64| {
        let mut h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..4)
            .map(|_| {
                h ^= h >> 29;
                h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                format!("{h:016x}")
            })
            .collect::<String>()
    };
    let body: String = std::iter::once("id,day,v,updated\n".to_string())
        .chain((2..650_000u64).map(|i| format!("{},d{},{i},2\n", id(i), i % 3)))
        .collect();
    std::fs::write(lake.join("landing/events_2.csv"), body).unwrap();
    let s = run(&["--memory-limit", "256M"]);
    assert!(
        s.contains("MB of new input is too much to hold in memory (--memory-limit 256 MB))"),
        "{s}"
    );
    assert_eq!(
        strings(
            &lake,
            "SELECT count(*) AS n, CAST(sum(v) AS VARCHAR) AS v FROM silver.e"
        )
        .await,
        vec![vec![
            "650000".to_string(),
            (10 + 20 + (2..650_000).sum::<i64>()).to_string()
        ]]
    );
}

/// A merge partitioned by a typed column (a timestamp, a decimal, a
/// boolean, an integer, a date) or by text with characters that paths
/// encode rewrites the partition that holds an updated row: the partition
/// values the upsert computes name the same partitions as those the Delta
/// log records, whatever their text there (a timestamp is
/// `2025-01-01 10:00:00.000000` in the log), and the stored files are
/// found under their encoded folder names (`day=North%20America`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_partitioned_by_typed_columns_replace_the_updated_rows() {
    // (the partition expression over the landed text, two partition values
    // as landed; a third, new partition)
    let cases = [
        // Text that the folder names and the log's paths encode: a space,
        // `%`, `/`, `=`, `:` and a letter outside ASCII.
        ("day", ["North America", "a%b/c=d:e"], "Zürich"),
        (
            "CAST(day AS TIMESTAMP)",
            ["2025-01-01 10:00:00", "2025-01-01 11:30:00"],
            "2025-01-02 00:00:00",
        ),
        ("CAST(day AS DECIMAL(6, 2))", ["1.50", "20.25"], "300.00"),
        ("CAST(day AS BOOLEAN)", ["true", "false"], ""),
        ("CAST(day AS BIGINT)", ["7", "-12"], "123456"),
        (
            "CAST(day AS DATE)",
            ["2025-01-01", "2024-12-31"],
            "2025-02-28",
        ),
    ];
    for (expr, [a, b], c) in cases {
        let dir = tempfile::tempdir().unwrap();
        // Partition a holds keys 1-3, partition b keys 4-5.
        let first = format!(
            "id,day,v,updated\n1,{a},10,1\n2,{a},20,1\n3,{a},30,1\n4,{b},40,1\n5,{b},50,1\n"
        );
        merge_pipeline_with_day(dir.path(), &first, expr);
        let run = |file: &str, body: &str| run_in_order(dir.path(), file, body);
        run("events_1.csv", &first);
        // Key 2 updated in place, key 4 moves from b to a, key 6 is new in
        // the third partition (or in a, for booleans).
        let c = if c.is_empty() { a } else { c };
        let (line, _) = run(
            "events_2.csv",
            &format!("id,day,v,updated\n2,{a},21,2\n4,{a},41,2\n6,{c},60,2\n"),
        );
        assert!(
            line.contains("1 inserted, 2 updated, 0 stale; 2 partitions rewritten"),
            "{expr}: {line}"
        );
        let lake = dir.path().join("lake");
        let q = "SELECT id, CAST(v AS VARCHAR) AS v, CAST(count(*) OVER (PARTITION BY id) AS VARCHAR) AS n FROM silver.e ORDER BY id";
        let want: Vec<Vec<String>> = [
            ("1", "10"),
            ("2", "21"),
            ("3", "30"),
            ("4", "41"),
            ("5", "50"),
            ("6", "60"),
        ]
        .iter()
        .map(|(id, v)| vec![id.to_string(), v.to_string(), "1".to_string()])
        .collect();
        assert_eq!(strings(&lake, q).await, want, "{expr}");
        // Each key once in the files themselves, not only in a query.
        let (rows, _, _) = delta::row_count(&silver_e(&lake).await).await.unwrap();
        assert_eq!(rows, 6, "{expr}");
    }
}

/// A writer whose rows arrive in small batches (a spilled group read back,
/// a partition's first rows) judges its encodings on its first 1,024 rows,
/// not on its first batch: the near-unique id and timestamp are written
/// plain, the repeating text keeps its dictionary, and every row is written
/// once. Checked in the files' own Parquet metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodings_are_judged_on_the_first_rows_not_the_first_batch() {
    use datafusion::arrow::array::TimestampMicrosecondArray;
    use deltalake::parquet::basic::Encoding;
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let url = url::Url::from_directory_path(&root).unwrap();
    let spec = WriteSpec {
        table_name: "t".into(),
        partition_by: vec!["day".into()],
        replace: Replace::All,
        transactions: vec![],
        metadata: HashMap::new(),
        description: None,
        symlink_manifest: false,
        upsert: None,
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("store", DataType::Utf8, true),
        Field::new("at", delta::utc_timestamp(), true),
        Field::new("day", DataType::Utf8, true),
    ]));
    // Batches of 1 to 250 rows, 3,000 rows over two days.
    let (mut batches, mut start, mut size) = (Vec::new(), 0usize, 1usize);
    while start < 3000 {
        let n = size.min(3000 - start);
        let rows = start..start + n;
        batches.push(Ok(RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    rows.clone()
                        .map(|i| Some(format!("order-{i:07}")))
                        .collect::<StringArray>(),
                ),
                Arc::new(
                    rows.clone()
                        .map(|i| Some(format!("store-{}", i % 7)))
                        .collect::<StringArray>(),
                ),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        rows.clone()
                            .map(|i| 1_700_000_000_000_000 + i as i64 * 1_000_000),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(
                    rows.map(|i| Some(if i < 2000 { "d1" } else { "d2" }))
                        .collect::<StringArray>(),
                ),
            ],
        )
        .unwrap()));
        start += n;
        size = size * 3 % 251 + 1;
    }
    let table = delta::ensure_table(&url, &HashMap::new(), &schema, &spec)
        .await
        .unwrap();
    let stream = Box::pin(RecordBatchStreamAdapter::new(
        schema.clone(),
        futures::stream::iter(batches),
    ));
    let written = delta::write(table, vec![stream], &spec).await.unwrap().1;
    assert_eq!((written.rows, written.files_added), (3000, 2));

    let mut rows = 0;
    for file in files_of(&root).iter().filter(|f| f.ends_with(".parquet")) {
        let reader =
            SerializedFileReader::new(std::fs::File::open(root.join(file)).unwrap()).unwrap();
        let meta = reader.metadata();
        rows += meta.file_metadata().num_rows();
        let group = meta.row_group(0);
        let dictionary = |name: &str| {
            let column = group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap();
            column
                .encodings()
                .any(|e| e == Encoding::RLE_DICTIONARY || e == Encoding::PLAIN_DICTIONARY)
        };
        assert!(!dictionary("id"), "{file}: id has a dictionary");
        assert!(!dictionary("at"), "{file}: at has a dictionary");
        assert!(dictionary("store"), "{file}: store has no dictionary");
    }
    assert_eq!(rows, 3000);
}
