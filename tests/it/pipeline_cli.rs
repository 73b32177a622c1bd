//! `lakehouse run` and `query` on small hand-made pipelines: errors name the
//! file and line, a `fail` expectation commits nothing, the quarantine
//! threshold stops a model, and `query` refuses anything but a query.

use std::path::Path;

use crate::{lakehouse, one, text};

/// A lake with one landing file and a pipeline folder holding `files`.
pub fn setup(root: &Path, landing: &str, files: &[(&str, &str)]) {
    std::fs::create_dir_all(root.join("lake/landing")).unwrap();
    std::fs::write(root.join("lake/landing/events_1.csv"), landing).unwrap();
    for (path, body) in files {
        let p = root.join("sql").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

pub const SOURCE: &str =
    "files = \"landing/events_*.csv\"\ncolumns = [\"id\", \"day\", \"v\", \"updated\"]\n";

fn run(root: &Path) -> std::process::Output {
    run_with(root, &[])
}

fn run_with(root: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--lake", "lake", "--pipeline", "sql"];
    args.extend_from_slice(extra);
    lakehouse(&args, root)
}

#[test]
fn a_model_reading_a_missing_table_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n",
        &[
            ("bronze/events.toml", SOURCE),
            (
                "silver/e.sql",
                "SELECT id\nFROM bronze.events\nJOIN bronze.nope USING (id)\n",
            ),
        ],
    );
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("silver/e.sql:3: reads table `bronze.nope`, which no source or model defines"),
        "{t}"
    );
}

#[test]
fn a_dependency_cycle_is_named() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n",
        &[
            ("bronze/events.toml", SOURCE),
            ("silver/a.sql", "SELECT * FROM silver.b"),
            ("silver/b.sql", "SELECT * FROM gold.c"),
            ("gold/c.sql", "SELECT * FROM silver.a"),
        ],
    );
    let t = text(&run(dir.path()));
    assert!(
        t.contains("dependency cycle between models: silver.a -> silver.b -> gold.c -> silver.a"),
        "{t}"
    );
}

#[test]
fn a_failing_expectation_commits_nothing_and_shows_an_offending_row() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n2,d1,-7,1\n",
        &[
            ("bronze/events.toml", SOURCE),
            (
                "silver/e.sql",
                "SELECT id, day, CAST(v AS INT) AS v FROM bronze.events",
            ),
            (
                "silver/e.toml",
                "[[expect]]\nname = \"v_positive\"\ncheck = \"v > 0\"\naction = \"fail\"\n",
            ),
        ],
    );
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("expectation `v_positive` failed"), "{t}");
    assert!(t.contains("id=2, day=d1, v=-7"), "{t}");
    assert!(t.contains("nothing was committed"), "{t}");
    // The table exists (created empty) but holds no rows from this run.
    let silver = dir.path().join("lake/silver/e");
    if silver.exists() {
        assert_eq!(
            crate::block_on_one(&dir.path().join("lake"), "SELECT count(*) FROM silver.e"),
            0
        );
    }
    // Bronze was committed: the ingest does not depend on the model.
    assert_eq!(
        crate::block_on_one(
            &dir.path().join("lake"),
            "SELECT count(*) FROM bronze.events"
        ),
        2
    );
}

#[test]
fn too_many_quarantined_rows_fail_the_model() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n2,d1,x,1\n3,d1,y,1\n",
        &[
            ("bronze/events.toml", SOURCE),
            ("silver/e.sql", "SELECT id, try_cast(v AS INT) AS v FROM bronze.events"),
            ("silver/e.toml", "max_quarantine_pct = 50\n[[expect]]\nname = \"v_is_int\"\ncheck = \"v IS NOT NULL\"\naction = \"drop\"\n"),
        ],
    );
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("2 of 3 rows would be quarantined, above the limit of 50% (max_quarantine_pct): `v_is_int` (v IS NOT NULL) 2 rows."),
        "{}",
        text(&out)
    );
}

#[test]
fn an_unknown_setting_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id\n1\n",
        &[
            ("bronze/events.toml", SOURCE),
            ("silver/e.sql", "SELECT id FROM bronze.events"),
            (
                "silver/e.toml",
                "mode = \"merge\"\nunique_key = [\"id\"]\npartition = [\"day\"]\n",
            ),
        ],
    );
    let t = text(&run(dir.path()));
    assert!(
        t.contains("silver/e.toml:3: unknown setting `partition`"),
        "{t}"
    );
}

#[test]
fn query_refuses_statements_that_write_or_read_files() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n",
        &[("bronze/events.toml", SOURCE)],
    );
    assert!(run(dir.path()).status.success());
    for bad in [
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
        "DROP TABLE bronze.events",
        "COPY (SELECT 1) TO '/tmp/out.csv'",
    ] {
        let out = lakehouse(&["query", "--lake", "lake", bad], dir.path());
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            text(&out).contains("only queries are allowed"),
            "{bad}: {}",
            text(&out)
        );
    }
    let out = lakehouse(
        &[
            "query",
            "--lake",
            "lake",
            "--format",
            "csv",
            "SELECT id, v FROM bronze.events",
        ],
        dir.path(),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "id,v\n1,5\n");
    let out = lakehouse(
        &[
            "query",
            "--lake",
            "lake",
            "--format",
            "json",
            "SELECT count(*) AS n FROM bronze.events",
        ],
        dir.path(),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[{\"n\":1}]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_keeps_rejected_lines_with_their_reason_and_position() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "\u{feff}id,day,v,updated\r\n1,d1,5,1\r\n2,d1\r\n3,\"d,2\",\"a \"\"b\"\"\",1\r\n\r\n4,d\"3,1,1\r\n", &[("bronze/events.toml", SOURCE)]);
    assert!(run(dir.path()).status.success());
    let lake = dir.path().join("lake");
    let kept = crate::strings(
        &lake,
        "SELECT id, day, v, CAST(_source_line AS VARCHAR) AS line FROM bronze.events ORDER BY id",
    )
    .await;
    assert_eq!(
        kept,
        vec![vec!["1", "d1", "5", "2"], vec!["3", "d,2", "a \"b\"", "4"]]
    );
    let rejected = crate::strings(&lake, "SELECT CAST(_source_line AS VARCHAR) AS line, _reason, _raw_text FROM quarantine.bronze_events ORDER BY line").await;
    assert_eq!(
        rejected,
        vec![
            vec!["3", "expected 4 fields, found 2", "2,d1"],
            vec!["6", "stray quote in unquoted field 2", "4,d\"3,1,1"]
        ]
    );
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) FROM bronze.events WHERE _source_file = 'landing/events_1.csv'"
        )
        .await,
        2
    );
}

/// Regression: in merge mode MERGE commits by itself, so the quarantine
/// limit must stop the stream before it can, not be checked afterwards.
#[test]
fn the_quarantine_limit_stops_a_merge_before_it_commits() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n",
        &[
            ("bronze/events.toml", SOURCE),
            ("silver/e.sql", "SELECT id, try_cast(v AS INT) AS v FROM bronze.events"),
            ("silver/e.toml", "mode = \"merge\"\nunique_key = [\"id\"]\nmax_quarantine_pct = 50\n[[expect]]\nname = \"v_is_int\"\ncheck = \"v IS NOT NULL\"\naction = \"drop\"\n"),
        ],
    );
    assert!(run(dir.path()).status.success());
    let lake = dir.path().join("lake");
    let commits_of = |log: std::path::PathBuf| {
        std::fs::read_dir(&log)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count()
    };
    let commits = || commits_of(lake.join("silver/e/_delta_log"));
    let quarantine_commits = || commits_of(lake.join("quarantine/silver_e/_delta_log"));
    let before = commits();
    let quarantine_before = quarantine_commits();
    std::fs::write(
        lake.join("landing/events_2.csv"),
        "id,day,v,updated\n2,d1,6,1\n3,d1,x,1\n4,d1,y,1\n5,d1,z,1\n",
    )
    .unwrap();
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("3 of 5 rows would be quarantined, above the limit of 50%"),
        "{}",
        text(&out)
    );
    assert_eq!(commits(), before, "the merge committed nothing");
    assert_eq!(
        quarantine_commits(),
        quarantine_before,
        "nor did its quarantine"
    );
    assert_eq!(
        crate::block_on_one(&lake, "SELECT count(*) FROM silver.e"),
        1
    );
}

#[test]
fn select_runs_part_of_the_graph_and_full_refresh_rebuilds_it() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n2,d1,7,1\n2,d1,8,2\n",
        &[
            ("bronze/events.toml", SOURCE),
            ("silver/a.sql", "SELECT id, CAST(v AS INT) AS v, CAST(updated AS INT) AS updated FROM bronze.events"),
            ("silver/a.toml", "mode = \"merge\"\nunique_key = [\"id\"]\nsequence_by = [\"updated\"]\n"),
            ("gold/b.sql", "SELECT sum(v) AS total FROM silver.a"),
            ("gold/c.sql", "SELECT count(*) AS n FROM bronze.events"),
        ],
    );
    assert!(run(dir.path()).status.success());
    let lake = dir.path().join("lake");
    assert_eq!(crate::block_on_one(&lake, "SELECT total FROM gold.b"), 13);

    let out = run_with(dir.path(), &["--select", "silver.a"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("silver.a") && t.contains("unchanged"), "{t}");
    assert!(
        !t.contains("gold.b") && !t.contains("gold.c"),
        "only the selected model runs: {t}"
    );

    let out = run_with(dir.path(), &["--select", "silver.a+", "--full-refresh"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let line = |table: &str| {
        t.lines()
            .find(|l| l.starts_with(table))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("silver.a").contains("succeeded"),
        "rebuilt, not skipped: {t}"
    );
    assert!(
        line("gold.b").contains("succeeded"),
        "downstream included: {t}"
    );
    assert!(!t.contains("gold.c"), "{t}");
    assert_eq!(
        crate::block_on_one(&lake, "SELECT count(*) FROM silver.a"),
        2
    );
    assert_eq!(crate::block_on_one(&lake, "SELECT total FROM gold.b"), 13);

    let out = run_with(dir.path(), &["--select", "silver.nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains(
            "--select silver.nope: no model `silver.nope`. Models: silver.a, gold.b, gold.c"
        ),
        "{}",
        text(&out)
    );
}

/// A lake copied elsewhere with its files' times kept (a move to a new
/// disk, a restore from backup) is the same lake: no landed file counts as
/// changed or new, and a file that lands after the copy is taken once.
#[tokio::test]
async fn a_lake_copied_with_its_times_kept_ingests_nothing_again() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n",
        &[("bronze/events.toml", SOURCE)],
    );
    std::fs::write(
        dir.path().join("lake/landing/events_2.csv"),
        "id,day,v,updated\n2,d2,6,1\n3,d2,7,1\n",
    )
    .unwrap();
    assert!(run(dir.path()).status.success());
    let copy = tempfile::tempdir().unwrap();
    crate::serve::copy_dir(dir.path(), copy.path());

    let out = run(copy.path());
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(!t.contains("changed after it was ingested"), "{t}");
    assert!(t.contains("no new files (2 seen)"), "{t}");
    let lake = copy.path().join("lake");
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.events").await, 3);

    // The copy goes on as the lake: a new file is taken, once.
    std::fs::write(
        lake.join("landing/events_3.csv"),
        "id,day,v,updated\n4,d3,8,1\n",
    )
    .unwrap();
    let t = text(&run(copy.path()));
    assert!(t.contains("succeeded (1 new file)"), "{t}");
    assert!(!t.contains("changed after it was ingested"), "{t}");
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.events").await, 4);
    assert_eq!(
        one(
            &lake,
            "SELECT count(DISTINCT _source_file) FROM bronze.events"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn a_file_changed_after_ingest_is_reported_not_ingested_twice() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n",
        &[("bronze/events.toml", SOURCE)],
    );
    assert!(run(dir.path()).status.success());
    // The exporter rewrites the same file with one more row.
    std::fs::write(
        dir.path().join("lake/landing/events_1.csv"),
        "id,day,v,updated\n1,d1,5,1\n2,d1,6,1\n",
    )
    .unwrap();
    let out = run(dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("landing/events_1.csv changed after it was ingested (26 -> 35 bytes)"),
        "{t}"
    );
    let lake = dir.path().join("lake");
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.events").await, 1);

    // A second file lands, with a bad row; then only the first file's
    // modification time changes: same size, still reported.
    std::fs::write(
        dir.path().join("lake/landing/events_2.csv"),
        "id,day,v,updated
3,d2,7,1
4,d2,8,1,extra
",
    )
    .unwrap();
    assert!(run(dir.path()).status.success());
    let f = std::fs::File::options()
        .write(true)
        .open(dir.path().join("lake/landing/events_2.csv"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let t = text(&run(dir.path()));
    assert!(
        t.contains("landing/events_2.csv changed after it was ingested (")
            && t.contains("--reingest landing/events_2.csv"),
        "{t}"
    );
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.events").await, 2);

    // Taken again on purpose: events_1's earlier row is replaced by its two
    // rows, events_2's rows (in the same data file) are carried over.
    let out = run_with(dir.path(), &["--reingest", "landing/events_1.csv"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("landing/events_1.csv taken again (--reingest): 1 earlier rows"),
        "{t}"
    );
    assert_eq!(
        crate::strings(
            &lake,
            "SELECT _source_file, id FROM bronze.events ORDER BY 2"
        )
        .await,
        vec![
            vec!["landing/events_1.csv".to_string(), "1".to_string()],
            vec!["landing/events_1.csv".to_string(), "2".to_string()],
            vec!["landing/events_2.csv".to_string(), "3".to_string()],
        ]
    );
    assert_eq!(
        one(&lake, "SELECT count(*) FROM quarantine.bronze_events").await,
        1
    );
    // The next plain run neither re-reads it nor reports it as changed.
    let t = text(&run(dir.path()));
    assert!(!t.contains("events_1.csv changed"), "{t}");
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.events").await, 3);

    // Taking events_2 again replaces its row and its reject.
    let out = run_with(dir.path(), &["--reingest", "landing/events_2.csv"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 earlier rows (bronze and rejects) replaced"),
        "{}",
        text(&out)
    );
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.events").await, 3);
    assert_eq!(
        one(&lake, "SELECT count(*) FROM quarantine.bronze_events").await,
        1
    );

    let out = run_with(dir.path(), &["--reingest", "landing/nope.csv"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--reingest landing/nope.csv: no source found a landed file"),
        "{}",
        text(&out)
    );
}

/// Durations and sizes out of range are clear errors with exit code 2,
/// never a panic (a timeout of 10^20 seconds once aborted `serve`).
#[test]
fn settings_out_of_range_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    for (args, expected) in [
        (
            vec![
                "--lake",
                lake,
                "serve",
                "--query-timeout",
                "99999999999999999999s",
            ],
            "longer than the longest duration",
        ),
        (
            vec![
                "--lake",
                lake,
                "serve",
                "--query-timeout",
                "18446744073709551615s",
            ],
            "longer than the longest duration",
        ),
        (
            vec!["--lake", lake, "serve", "--query-timeout", "soon"],
            "not a duration",
        ),
        (
            vec!["--lake", lake, "serve", "--query-memory", "NaN"],
            "not a size",
        ),
        (
            vec!["--lake", lake, "serve", "--query-memory", "0"],
            "is zero",
        ),
        (
            vec!["--lake", lake, "--memory-limit=-1G", "tables"],
            "not a size",
        ),
        (
            vec!["--lake", lake, "--memory-limit=1e400", "tables"],
            "not a size",
        ),
    ] {
        let out = lakehouse(&args, dir.path());
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(expected), "{args:?}: {t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
    }
}

/// A landed file no source's glob matches is reported (summary and log),
/// not silently ignored; hidden files are not.
#[test]
fn landed_files_no_source_reads_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n",
        &[("bronze/events.toml", SOURCE)],
    );
    let landing = dir.path().join("lake/landing");
    std::fs::write(landing.join("events_2.csv.gz"), b"not read").unwrap();
    std::fs::create_dir_all(landing.join("other")).unwrap();
    std::fs::write(landing.join("other/events_3.csv"), b"id\n").unwrap();
    std::fs::write(landing.join(".DS_Store"), b"").unwrap();
    let out = run(dir.path());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("2 landed file(s) match no source's `files` glob and were not read: landing/events_2.csv.gz, landing/other/events_3.csv"),
        "{t}"
    );
    assert!(!t.contains(".DS_Store"), "{t}");
}

#[tokio::test]
async fn a_failure_after_the_run_started_exits_1_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n2,d1,7,1\n",
        &[
            ("bronze/events.toml", SOURCE),
            (
                "silver/a.sql",
                "SELECT id, try_cast(v AS INT) AS v FROM bronze.events",
            ),
            ("gold/b.sql", "SELECT sum(v) AS total FROM silver.a"),
        ],
    );
    let run_failing = |point: &str| {
        crate::lakehouse_with_env(
            &["run", "--lake", "lake", "--pipeline", "sql"],
            dir.path(),
            &[("LAKEHOUSE_FAILPOINTS", point)],
        )
    };
    // The session for the models cannot start after bronze took the file.
    let out = run_failing("session-build");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("error: could not start the models, none ran: internal error: failpoint `session-build`"), "{t}");
    let lake = dir.path().join("lake");
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.events").await, 2);
    assert_eq!(
        one(&lake, "SELECT count(*) FROM system.runs WHERE status = 'failed' AND errors LIKE '%session-build%'").await,
        1
    );
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) FROM system.steps WHERE kind = 'model' AND status = 'not run'"
        )
        .await,
        2
    );

    // The table listing fails after the first model: it committed, the
    // second did not run, and the run is recorded as failed.
    let out = run_failing("catalog-refresh");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(
            "could not list the lake's tables after silver.a; the models after it did not run"
        ),
        "{t}"
    );
    assert_eq!(one(&lake, "SELECT count(*) FROM silver.a").await, 2);
    assert_eq!(
        one(&lake, "SELECT count(*) FROM system.runs WHERE status = 'failed' AND errors LIKE '%catalog-refresh%'").await,
        1
    );
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) FROM system.steps WHERE step = 'gold.b' AND status = 'not run'"
        )
        .await,
        2
    );

    // Without the failure the next run completes the work.
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(one(&lake, "SELECT total FROM gold.b").await, 12);
}

#[tokio::test]
async fn landed_files_no_source_reads_are_steps_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n",
        &[("bronze/events.toml", SOURCE)],
    );
    std::fs::write(dir.path().join("lake/landing/events_2.csv.gz"), b"not read").unwrap();
    std::fs::write(dir.path().join("lake/landing/notes.txt"), b"not read").unwrap();
    let out = run(dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("2 landed file(s) match no source's `files` glob and were not read: landing/events_2.csv.gz, landing/notes.txt"), "{t}");
    let lake = dir.path().join("lake");
    let steps = crate::strings(
        &lake,
        "SELECT step, status FROM system.steps WHERE kind = 'unread_file' ORDER BY step",
    )
    .await;
    assert_eq!(
        steps,
        [
            ["landing/events_2.csv.gz", "not read"],
            ["landing/notes.txt", "not read"]
        ]
    );
}

/// Models whose inputs are done run at the same time: three gold models
/// over one silver table all start before any of them ends. One failing
/// does not stop its siblings; only what reads it does not run; the
/// summary keeps the pipeline's order.
#[tokio::test]
async fn independent_models_run_at_the_same_time_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        "id,day,v,updated\n1,d1,5,1\n2,d1,7,1\n3,d2,11,1\n",
        &[
            ("bronze/events.toml", SOURCE),
            (
                "silver/e.sql",
                "SELECT id, day, CAST(v AS INT) AS v FROM bronze.events",
            ),
            (
                "gold/a.sql",
                "SELECT day, sum(v) AS total FROM silver.e GROUP BY day",
            ),
            ("gold/b.sql", "SELECT count(*) AS n FROM silver.e"),
            // Fails while it runs (the cast of each row), not while planned.
            (
                "gold/c.sql",
                "SELECT CAST(concat(id, 'x') AS INT) AS bad FROM silver.e",
            ),
            ("gold/d.sql", "SELECT count(*) AS n FROM gold.c"),
        ],
    );
    let out = crate::lakehouse_with_env(
        &["run", "--lake", "lake", "--pipeline", "sql"],
        dir.path(),
        &[("RUST_LOG", "info")],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let at = |needle: &str| {
        t.find(needle)
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{t}"))
    };
    let first_gold_done = at("model done model=gold.");
    for m in ["gold.a", "gold.b", "gold.c"] {
        assert!(
            at(&format!("{m}: running")) < first_gold_done,
            "{m} started after another gold model ended:\n{t}"
        );
    }
    assert!(
        at("model done model=silver.e") < at("gold.a: running"),
        "{t}"
    );
    assert!(!t.contains("gold.d: running"), "{t}");
    let summary: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("gold.") || l.starts_with("silver."))
        .collect();
    let order: Vec<&str> = summary
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        order,
        ["silver.e", "gold.a", "gold.b", "gold.c", "gold.d"],
        "{t}"
    );
    assert!(summary[1].contains("succeeded"), "{t}");
    assert!(summary[2].contains("succeeded"), "{t}");
    assert!(summary[3].contains("failed"), "{t}");
    assert!(summary[4].contains("not run"), "{t}");
    let lake = dir.path().join("lake");
    assert_eq!(one(&lake, "SELECT sum(total) FROM gold.a").await, 23);
    assert_eq!(one(&lake, "SELECT n FROM gold.b").await, 3);
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) FROM system.steps WHERE status = 'not run' AND step = 'gold.d'"
        )
        .await,
        1
    );
}
