//! What operators and orchestrators read: `run --json`, the metrics file
//! (parsed with prometheus_client's parser), `runs` and `runs show`, exit
//! codes and log formats. Values are checked against the independent
//! computation of the example, not against the job's own other outputs.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::expected::compute;
use crate::{gen, lakehouse, lakehouse_with_env, python, repo, text};

/// The samples of a Prometheus text file, read by prometheus_client.
pub fn prom_samples(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .arg(repo().join("scripts/prom_samples.py"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs (scripts/setup installs prometheus_client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the metrics:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The value of the one sample named `name` whose labels include `labels`.
pub fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<&Value> = samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .collect();
    assert_eq!(hits.len(), 1, "{name}{labels:?}: {hits:?}");
    hits[0]["value"].as_f64().unwrap()
}

fn step<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {doc}"))
}

fn stdout_json(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one line on stdout: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_json_metrics_and_run_history_agree_with_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    gen::generate(
        &lake,
        &gen::Options {
            rows: 9_000,
            files: 3,
            days: 6,
            seed: 23,
            branch_rows: 700,
            ..Default::default()
        },
    )
    .unwrap();
    let e = compute(&lake);
    assert!(e.duplicates > 0 && e.quarantine.len() == 6, "{e:?}");
    let metrics = dir.path().join("textfile/lakehouse.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    let pipeline = repo().join("sql");
    let args = [
        "run",
        "--lake",
        lake.to_str().unwrap(),
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--json",
        "--metrics-file",
        metrics.to_str().unwrap(),
    ];
    let before = chrono::Utc::now().timestamp() as f64;
    let first = lakehouse(&args, dir.path());
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    // The readable summary moved to stderr; stdout is the JSON alone.
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("succeeded in"),
        "{}",
        text(&first)
    );
    let doc = stdout_json(&first);
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["exit_code"], 0);
    let run_id = doc["run_id"].as_str().unwrap().to_string();

    let orders = step(&doc, "bronze.orders");
    assert_eq!(orders["kind"], "source");
    assert_eq!(orders["rows_written"], e.bronze_rows);
    assert_eq!(orders["rows_rejected"], e.bronze_rejects);
    let landed = std::fs::read_dir(lake.join("landing/orders"))
        .unwrap()
        .count();
    assert!(landed >= 3);
    assert_eq!(orders["files_ingested"], landed);
    assert_eq!(orders["reconciled"], true);
    let branch = step(&doc, "bronze.branch_orders");
    assert_eq!(branch["rows_written"], e.branch_bronze_rows);
    assert_eq!(branch["rows_rejected"], e.branch_rejects);

    let silver = step(&doc, "silver.orders");
    assert_eq!(silver["status"], "succeeded");
    assert_eq!(silver["strategy"], "full");
    assert_eq!(silver["rows_written"], e.silver_rows);
    assert_eq!(silver["duplicates"], e.duplicates);
    let quarantined: u64 = e.quarantine.values().sum();
    assert_eq!(silver["rows_quarantined"], quarantined);
    assert_eq!(
        silver["rows_in"].as_u64().unwrap(),
        e.silver_rows + quarantined + e.duplicates
    );
    assert!(silver["version"].as_i64().is_some(), "{silver}");
    let rules: BTreeMap<String, u64> = silver["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["quarantined"].as_u64().unwrap(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(rules, e.quarantine);
    let gold = step(&doc, "gold.daily_region_sales");
    assert_eq!(gold["rows_written"], e.daily.len() as u64);
    assert_eq!(gold["duplicates"], 0);

    // The metrics file, through prometheus_client's parser.
    let after = chrono::Utc::now().timestamp() as f64;
    let m = prom_samples(&std::fs::read_to_string(&metrics).unwrap());
    assert_eq!(sample(&m, "lakehouse_run_success", &[]), 1.0);
    assert_eq!(sample(&m, "lakehouse_run_exit_code", &[]), 0.0);
    assert_eq!(
        sample(
            &m,
            "lakehouse_run_info",
            &[("run_id", &run_id), ("status", "succeeded")]
        ),
        1.0
    );
    let rows = |step: &str, outcome: &str| {
        sample(
            &m,
            "lakehouse_step_rows",
            &[("step", step), ("outcome", outcome)],
        ) as u64
    };
    assert_eq!(rows("bronze.orders", "written"), e.bronze_rows);
    assert_eq!(rows("bronze.orders", "rejected"), e.bronze_rejects);
    assert_eq!(rows("silver.orders", "written"), e.silver_rows);
    assert_eq!(rows("silver.orders", "quarantined"), quarantined);
    assert_eq!(rows("silver.orders", "duplicates"), e.duplicates);
    for (rule, n) in &e.quarantine {
        assert_eq!(
            sample(
                &m,
                "lakehouse_expectation_quarantined_rows",
                &[("model", "silver.orders"), ("rule", rule)]
            ) as u64,
            *n,
            "{rule}"
        );
    }
    let fresh = sample(
        &m,
        "lakehouse_table_last_success_timestamp_seconds",
        &[("table", "gold.daily_region_sales")],
    );
    assert!(fresh >= before - 1.0 && fresh <= after + 1.0, "{fresh}");
    assert_eq!(
        sample(&m, "lakehouse_step_success", &[("step", "silver.orders")]),
        1.0
    );
    let leftovers: Vec<_> = std::fs::read_dir(metrics.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // A re-run with nothing new: recorded as unchanged, the file replaced.
    let second = lakehouse(&args, dir.path());
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    let again = stdout_json(&second);
    assert_eq!(again["status"], "unchanged");
    assert_eq!(step(&again, "silver.orders")["status"], "unchanged");
    assert_eq!(step(&again, "silver.orders")["strategy"], "unchanged");
    let m2 = prom_samples(&std::fs::read_to_string(&metrics).unwrap());
    let second_id = again["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        sample(
            &m2,
            "lakehouse_run_info",
            &[("run_id", &second_id), ("status", "unchanged")]
        ),
        1.0
    );
    assert!(
        sample(
            &m2,
            "lakehouse_table_last_success_timestamp_seconds",
            &[("table", "silver.orders")]
        ) >= fresh
    );
    assert_eq!(
        sample(
            &m2,
            "lakehouse_step_rows",
            &[("step", "silver.orders"), ("outcome", "written")]
        ),
        0.0
    );

    // The history, newest first.
    let lake_arg = lake.to_str().unwrap();
    let runs = lakehouse(
        &["runs", "--lake", lake_arg, "--format", "json"],
        dir.path(),
    );
    assert!(runs.status.success(), "{}", text(&runs));
    let list: Vec<Value> = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["run_id"], second_id.as_str());
    assert_eq!(list[0]["status"], "unchanged");
    assert_eq!(list[0]["ran"], "");
    assert_eq!(list[1]["run_id"], run_id.as_str());
    assert_eq!(list[1]["status"], "succeeded");
    // The reference tables' lines, counted straight from the files.
    let mut reference_lines = 0u64;
    for file in ["products.csv", "stores.csv"] {
        let body = std::fs::read_to_string(lake.join("landing").join(file)).unwrap();
        reference_lines += body
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count() as u64;
    }
    assert!(reference_lines > 0);
    assert_eq!(
        list[1]["rows_landed"].as_u64().unwrap(),
        e.bronze_rows
            + e.bronze_rejects
            + e.branch_bronze_rows
            + e.branch_rejects
            + reference_lines
    );
    assert_eq!(
        list[1]["ran"],
        "bronze.branch_orders, bronze.orders, bronze.products, bronze.stores, silver.orders, gold.category_daily, gold.daily_region_sales"
    );
    let table = text(&lakehouse(
        &["runs", "--lake", lake_arg, "--last", "1"],
        dir.path(),
    ));
    assert!(
        table.contains(&second_id) && !table.contains(&run_id),
        "{table}"
    );

    let prefix = &run_id[..run_id.len() - 3];
    let show = lakehouse(
        &[
            "runs", "--lake", lake_arg, "show", prefix, "--format", "json",
        ],
        dir.path(),
    );
    assert!(show.status.success(), "{}", text(&show));
    let one: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(one["run_id"], run_id.as_str());
    assert_eq!(step(&one, "silver.orders")["duplicates"], e.duplicates);
    let rules: BTreeMap<String, u64> = one["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["quarantined"].as_u64().unwrap(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(rules, e.quarantine);
    let shown = text(&lakehouse(
        &["runs", "--lake", lake_arg, "show", "last"],
        dir.path(),
    ));
    assert!(
        shown.contains(&format!("run {second_id}: unchanged")),
        "{shown}"
    );
    let missing = lakehouse(&["runs", "--lake", lake_arg, "show", "nope"], dir.path());
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("no run `nope` in system.runs"),
        "{}",
        text(&missing)
    );
    let injected = lakehouse(
        &["runs", "--lake", lake_arg, "show", "x' OR 'a'='a"],
        dir.path(),
    );
    assert_eq!(injected.status.code(), Some(2));
    assert!(
        text(&injected).contains("is not a run id"),
        "{}",
        text(&injected)
    );
}

fn tiny(root: &Path) {
    crate::pipeline_cli::setup(
        root,
        "id,day,v,updated\n1,2025-01-01,5,1\n2,2025-01-02,x,1\n",
        &[
            ("bronze/events.toml", crate::pipeline_cli::SOURCE),
            (
                "silver/e.sql",
                "SELECT CAST(id AS BIGINT) AS id, day FROM bronze.events\n",
            ),
        ],
    );
}

#[test]
fn logs_have_no_colour_off_a_terminal_and_are_json_lines_on_request() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    let args = ["run", "--lake", "lake", "--pipeline", "sql"];
    let plain = lakehouse_with_env(&args, dir.path(), &[("RUST_LOG", "lakehouse=info")]);
    assert!(plain.status.success(), "{}", text(&plain));
    let stderr = String::from_utf8_lossy(&plain.stderr).to_string();
    assert!(stderr.contains("ingested"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escape codes in a piped log: {stderr:?}"
    );

    let mut json_args = args.to_vec();
    json_args.extend(["--log-format", "json", "--full-refresh"]);
    let out = lakehouse_with_env(&json_args, dir.path(), &[("RUST_LOG", "lakehouse=info")]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let events: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let done = events
        .iter()
        .find(|e| e["message"] == "model done")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(done["level"], "INFO");
    assert_eq!(done["model"], "silver.e");
    assert_eq!(done["rows"], 2);
}

#[test]
fn a_run_that_cannot_start_says_so_in_json_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    std::fs::write(
        dir.path().join("sql/silver/e.sql"),
        "SELECT id FROM bronze.nope\n",
    )
    .unwrap();
    let out = lakehouse(
        &["run", "--lake", "lake", "--pipeline", "sql", "--json"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let doc = stdout_json(&out);
    assert_eq!(doc["status"], "not started");
    assert_eq!(doc["exit_code"], 2);
    assert!(
        doc["errors"][0].as_str().unwrap().contains("bronze.nope"),
        "{doc}"
    );
}

/// `/metrics` of a real server: its own token, each protocol's queries
/// counted by outcome with the rows they returned (compared with the rows
/// the clients received), refusals, table versions; and every metric the
/// Grafana dashboard reads exists in the server's or the run's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_metrics_count_each_protocol_and_the_dashboard_reads_real_names() {
    use crate::serve::{copy_dir, Server, PASSWORD};
    use futures::TryStreamExt;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    copy_dir(&repo().join("lake/landing"), &lake.join("landing"));
    let metrics_file = dir.path().join("run.prom");
    let out = lakehouse(
        &[
            "--lake",
            lake.to_str().unwrap(),
            "run",
            "--pipeline",
            repo().join("sql").to_str().unwrap(),
            "--metrics-file",
            metrics_file.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let server = Server::start(&lake, &["--metrics-token", "scrape-7f3a"]);
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", server.http);
    for request in [
        http.get(&url),
        http.get(&url).bearer_auth("wrong"),
        http.get(&url).basic_auth("analyst", Some(PASSWORD)),
    ] {
        assert_eq!(request.send().await.unwrap().status(), 401);
    }
    let scrape = || async {
        let r = http
            .get(&url)
            .bearer_auth("scrape-7f3a")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        prom_samples(&r.text().await.unwrap())
    };

    // Postgres wire: two queries with known row counts, one unknown table,
    // one refused statement.
    let pg = server.pg().await;
    let regions = crate::serve::pg_text(&pg, "SELECT * FROM gold.daily_region_sales")
        .await
        .len();
    let days = crate::serve::pg_text(&pg, "SELECT DISTINCT order_date FROM silver.orders")
        .await
        .len();
    assert!(regions > 0 && days > 0 && regions != days);
    assert!(pg.simple_query("SELECT * FROM gold.nope").await.is_err());
    assert!(pg
        .simple_query("DROP TABLE gold.daily_region_sales")
        .await
        .is_err());
    // HTTP: one query of 3 rows.
    let r = http
        .post(format!("http://{}/sql", server.http))
        .basic_auth("analyst", Some(PASSWORD))
        .header("accept", "application/json")
        .body("SELECT * FROM (VALUES (1), (2), (3)) AS t(x)")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Flight SQL: one query.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.flight))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    flight.handshake("analyst", PASSWORD).await.unwrap();
    let info = flight
        .execute("SELECT region FROM gold.daily_region_sales".into(), None)
        .await
        .unwrap();
    let batches: Vec<datafusion::arrow::array::RecordBatch> = flight
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let flight_rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(flight_rows, regions);

    let m = scrape().await;
    let q = |protocol: &str, outcome: &str| {
        sample(
            &m,
            "lakehouse_serve_queries_total",
            &[("protocol", protocol), ("outcome", outcome)],
        )
    };
    assert_eq!(q("postgres", "ok"), 2.0, "{m:?}");
    assert_eq!(q("postgres", "no_such_table"), 1.0);
    assert_eq!(q("http", "ok"), 1.0);
    assert_eq!(q("flight", "ok"), 1.0);
    let rows = |protocol: &str| {
        sample(
            &m,
            "lakehouse_serve_rows_returned_total",
            &[("protocol", protocol)],
        ) as usize
    };
    assert_eq!(rows("postgres"), regions + days);
    assert_eq!(rows("http"), 3);
    assert_eq!(rows("flight"), regions);
    assert!(
        sample(
            &m,
            "lakehouse_serve_bytes_returned_total",
            &[("protocol", "postgres")]
        ) > 0.0
    );
    assert_eq!(
        sample(
            &m,
            "lakehouse_serve_refused_statements_total",
            &[("protocol", "postgres")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "lakehouse_serve_query_duration_seconds_count",
            &[("protocol", "postgres")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            "lakehouse_serve_connections",
            &[("protocol", "postgres")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "lakehouse_serve_queries_running",
            &[("protocol", "postgres")]
        ),
        0.0
    );
    let version = crate::one(
        &lake,
        "SELECT max(version) FROM system.steps WHERE step = 'gold.daily_region_sales'",
    )
    .await;
    assert_eq!(
        sample(
            &m,
            "lakehouse_serve_table_version",
            &[("table", "gold.daily_region_sales")]
        ),
        version as f64
    );
    drop(pg);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let m = scrape().await;
    assert_eq!(
        sample(
            &m,
            "lakehouse_serve_connections",
            &[("protocol", "postgres")]
        ),
        0.0
    );

    // Every name the dashboard queries is one these outputs have.
    let run = prom_samples(&std::fs::read_to_string(&metrics_file).unwrap());
    let names: std::collections::BTreeSet<String> = m
        .iter()
        .chain(run.iter())
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("scripts/grafana/lakehouse-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut used = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if word.starts_with("lakehouse_") {
                    used += 1;
                    assert!(
                        names.contains(word),
                        "the dashboard reads `{word}`, which no output has ({expr})"
                    );
                }
            }
        }
    }
    assert!(used >= 20, "{used}");
}

/// Lineage of the example, read off the models' plans on a lake that has
/// no table yet: revenue comes from quantity, unit_price and status of both
/// order sources, region from the stores file, and the graph formats name
/// every edge.
#[test]
fn lineage_traces_gold_columns_to_bronze_columns_and_landing_globs() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = repo().join("sql");
    let run = |args: &[&str]| {
        let mut all = vec![
            "--lake",
            "lake",
            "lineage",
            "--pipeline",
            pipeline.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let out = lakehouse(&all, dir.path());
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let doc: Value = serde_json::from_str(&run(&[
        "--format",
        "json",
        "gold.daily_region_sales.revenue",
    ]))
    .unwrap();
    let tables = doc["tables"].as_array().unwrap();
    let gold = tables
        .iter()
        .find(|t| t["table"] == "gold.daily_region_sales")
        .unwrap();
    let columns = gold["columns"].as_array().unwrap();
    assert_eq!(columns.len(), 1, "{gold}");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        strings(&columns[0]["sources"]),
        [
            "bronze.branch_orders.quantity",
            "bronze.branch_orders.status",
            "bronze.branch_orders.unit_price",
            "bronze.orders.quantity",
            "bronze.orders.status",
            "bronze.orders.unit_price",
        ]
    );
    assert_eq!(
        strings(&columns[0]["inputs"]),
        ["silver.orders.amount", "silver.orders.status"]
    );
    assert!(
        columns[0]["expression"]
            .as_str()
            .unwrap()
            .contains("sum(CASE WHEN silver.orders.status"),
        "{}",
        columns[0]
    );
    // Upstream tables only: not gold.category_daily.
    let names: Vec<&str> = tables
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"gold.category_daily"), "{names:?}");
    let orders = tables
        .iter()
        .find(|t| t["table"] == "bronze.orders")
        .unwrap();
    assert_eq!(orders["files"], "landing/orders/*.csv*");

    let all: Value = serde_json::from_str(&run(&["--format", "json"])).unwrap();
    let silver = all["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "silver.orders")
        .unwrap();
    let region = silver["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "region")
        .unwrap();
    assert_eq!(strings(&region["sources"]), ["bronze.stores.region"]);
    assert!(
        !silver["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"].as_str().unwrap().starts_with('_')),
        "lineage columns are not table columns"
    );

    let dot = run(&["--format", "dot"]);
    assert!(dot.starts_with("digraph lineage {"), "{dot}");
    assert!(
        dot.contains("silver_orders -> gold_daily_region_sales;"),
        "{dot}"
    );
    let mermaid = run(&["--format", "mermaid"]);
    assert!(
        mermaid.contains("bronze_stores --> silver_orders"),
        "{mermaid}"
    );
    let bad = lakehouse(
        &[
            "--lake",
            "lake",
            "lineage",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "gold.nope",
        ],
        dir.path(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains("no table `gold.nope` in the pipeline"),
        "{}",
        text(&bad)
    );
}

/// The staging plans' debug log gives the project's own operators' metrics
/// (README, "Where a model's time goes"): the rows silver's check
/// quarantined and its deduplication collapsed equal the run summary's
/// counts, and the files its writers report are the files on disk.
#[test]
fn the_staging_plans_log_reports_the_projects_own_operators() {
    let dir = tempfile::tempdir().unwrap();
    crate::serve::copy_dir(
        &repo().join("lake/landing"),
        &dir.path().join("lake/landing"),
    );
    let pipeline = repo().join("sql");
    let out = lakehouse_with_env(
        &[
            "run",
            "--lake",
            "lake",
            "--pipeline",
            pipeline.to_str().unwrap(),
        ],
        dir.path(),
        &[("RUST_LOG", "warn,lakehouse::cluster=debug")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    let line = crate::summary_line(&summary, "silver.orders");
    // table, status (three words), rows in, written, rejected, duplicates, time
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (rejected, duplicates) = (fields[fields.len() - 3], fields[fields.len() - 2]);
    assert!(rejected.parse::<u64>().unwrap() > 0, "{line}");
    assert!(duplicates.parse::<u64>().unwrap() > 0, "{line}");
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    // The executed silver plan: from its first line to the next plan.
    let start = log
        .find("staging plan, executed plan=LakehouseStage: file://")
        .and_then(|_| {
            log.match_indices("staging plan, executed plan=LakehouseStage: ")
                .find(|(at, _)| {
                    log[*at..]
                        .lines()
                        .next()
                        .unwrap_or("")
                        .contains("silver/orders")
                })
                .map(|(at, _)| at)
        })
        .unwrap_or_else(|| panic!("no executed plan of silver.orders in\n{log}"));
    let plan: Vec<&str> = log[start..]
        .lines()
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with(' '))
        .map(|(_, l)| l)
        .collect();
    let metric = |node: &str, name: &str| -> String {
        let l = plan
            .iter()
            .find(|l| l.contains(&format!("{node}:")))
            .unwrap_or_else(|| panic!("no {node} in {plan:#?}"));
        metric_value(l, name)
    };
    assert_eq!(metric("LakehouseCheck", "quarantined_rows"), rejected);
    assert_eq!(metric("LakehouseDedup", "collapsed_rows"), duplicates);
    assert_eq!(metric("LakehouseDedup", "spill_count"), "0");
    let parquet = crate::files(&dir.path().join("lake/silver/orders"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .filter(|p| !p.to_string_lossy().contains("_delta_log"))
        .count();
    assert_eq!(
        metric("LakehouseStage", "files_written"),
        parquet.to_string()
    );
    assert!(metric("LakehouseStage", "elapsed_compute").ends_with('s'));

    // Each source's ingest plan: rows written and rejected as the summary
    // counts them, and its bronze and reject files as on disk.
    let parquet_in = |table: &str| {
        crate::files(&dir.path().join("lake").join(table))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .filter(|p| !p.to_string_lossy().contains("_delta_log"))
            .count()
    };
    for source in ["branch_orders", "orders"] {
        let ingest = log
            .lines()
            .find(|l| {
                l.contains("staging plan, executed plan=LakehouseIngest: ")
                    && l.contains(&format!("LakehouseIngest: {source} -> "))
            })
            .unwrap_or_else(|| panic!("no executed ingest plan of {source} in\n{log}"));
        let value = |name: &str| metric_value(ingest, name);
        let fields: Vec<&str> = crate::summary_line(&summary, &format!("bronze.{source}"))
            .split_whitespace()
            .collect();
        let (written, rejected) = (fields[fields.len() - 4], fields[fields.len() - 3]);
        // Counts of a thousand and more are shown rounded (2.46 K).
        if written.len() < 4 {
            assert_eq!(value("written_rows"), written, "{ingest}");
        }
        assert_eq!(value("rejected_rows"), rejected, "{ingest}");
        let files = parquet_in(&format!("bronze/{source}"))
            + parquet_in(&format!("quarantine/bronze_{source}"));
        assert_eq!(value("files_written"), files.to_string(), "{ingest}");
    }
}

/// The value of metric `name` in a plan line of the debug log
/// (`..., metrics=[output_rows=84, files_written=70]`), as shown.
fn metric_value(line: &str, name: &str) -> String {
    let at = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    line[at + name.len() + 1..]
        .split([',', ']'])
        .next()
        .unwrap_or_default()
        .to_string()
}
