//! `lakehouse serve` with real clients: tokio-postgres and psql on Postgres
//! wire, the arrow-flight Flight SQL client (and ADBC, psycopg, SQLAlchemy
//! from Python), an HTTP client for every format. The server is the real
//! binary on port 0 over a lake built by the example pipeline.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;

use super::{lakehouse, repo, strings, text};

pub(crate) const PASSWORD: &str = "correct horse";

/// A lake built from the committed sample landing files by the example pipeline.
fn example_lake(root: &Path) -> PathBuf {
    let lake = root.join("lake");
    copy_dir(&repo().join("lake/landing"), &lake.join("landing"));
    let out = lakehouse(
        &[
            "--lake",
            lake.to_str().unwrap(),
            "run",
            "--pipeline",
            repo().join("sql").to_str().unwrap(),
        ],
        root,
    );
    assert!(out.status.success(), "{}", text(&out));
    lake
}

/// Copies the folder `from` into `to`, keeping every file's modification
/// time (as `cp -a`, `rsync -a` or a backup's restore do); every file gets
/// a new inode.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
            let modified = e.metadata().unwrap().modified().unwrap();
            let f = std::fs::File::options().write(true).open(&target).unwrap();
            f.set_modified(modified).unwrap();
        }
    }
}

pub(crate) struct Server {
    child: Child,
    pub(crate) pg: String,
    pub(crate) flight: String,
    pub(crate) http: String,
}

impl Server {
    pub(crate) fn start(lake: &Path, extra: &[&str]) -> Server {
        Self::start_uri(lake.to_str().unwrap(), lake, extra, &[])
    }

    pub(crate) fn start_uri(
        uri: &str,
        cwd: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lakehouse"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["--lake", uri, "serve"])
            .args([
                "--pg-addr",
                "127.0.0.1:0",
                "--flight-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("LAKEHOUSE_USER", "analyst")
            .env("LAKEHOUSE_PASSWORD", PASSWORD)
            .env("RUST_LOG", "warn")
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut pg, mut flight, mut http) = (None, None, None);
        while pg.is_none() || flight.is_none() || http.is_none() {
            let line = lines
                .next()
                .expect("serve printed its addresses before exiting")
                .unwrap();
            let addr = line.rsplit(' ').next().unwrap().to_string();
            match line.split_whitespace().next() {
                Some("postgres") => pg = Some(addr),
                Some("flight") => flight = Some(addr),
                Some("http") => http = Some(addr),
                _ => {}
            }
        }
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            pg: pg.unwrap(),
            flight: flight.unwrap(),
            http: http.unwrap(),
        }
    }

    fn pg_config(&self, password: &str) -> String {
        let (host, port) = self.pg.rsplit_once(':').unwrap();
        format!("host={host} port={port} user=analyst password='{password}' dbname=lakehouse")
    }

    /// psql against this server as `analyst`, with `args` after the
    /// connection options.
    pub(crate) fn psql(&self, args: &[&str]) -> std::process::Output {
        let (host, port) = self.pg.rsplit_once(':').unwrap();
        Command::new("psql")
            .args([
                "-h",
                host,
                "-p",
                port,
                "-U",
                "analyst",
                "-d",
                "lakehouse",
                "-X",
            ])
            .args(args)
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("psql is installed (scripts/setup installs postgresql-client)")
    }

    pub(crate) async fn pg(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.pg_config(PASSWORD), tokio_postgres::NoTls)
                .await
                .expect("connects with the right password");
        tokio::spawn(conn);
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn pg_text(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn pg_code(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

const BY_REGION: &str =
    "SELECT region, sum(revenue) AS revenue, sum(orders) AS orders FROM gold.daily_region_sales GROUP BY region ORDER BY region";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wire_answers_clients_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let lake = example_lake(dir.path());
    let expected = strings(&lake, BY_REGION).await;
    assert_eq!(expected.len(), 5);
    let server = Server::start(&lake, &[]);

    // Wrong password and wrong user fail the same way.
    for config in [
        server.pg_config("wrong"),
        server
            .pg_config(PASSWORD)
            .replace("user=analyst", "user=admin"),
    ] {
        let e = tokio_postgres::connect(&config, tokio_postgres::NoTls)
            .await
            .err()
            .expect("a wrong password is refused");
        let message = e
            .as_db_error()
            .map(|d| d.message().to_lowercase())
            .unwrap_or_default();
        assert!(message.contains("password authentication failed"), "{e:?}");
    }

    let client = server.pg().await;
    // Simple protocol (text) and extended protocol (binary, with a parameter).
    assert_eq!(pg_text(&client, BY_REGION).await, expected);
    let rows = client
        .query(
            "SELECT CAST(sum(orders) AS BIGINT) FROM gold.daily_region_sales WHERE region = $1",
            &[&"east"],
        )
        .await
        .unwrap();
    let east: i64 = rows[0].get(0);
    assert_eq!(
        east.to_string(),
        expected.iter().find(|r| r[0] == "east").unwrap()[2]
    );

    // Types: dates, decimals and UTC timestamps keep their Postgres types.
    let stmt = client
        .prepare("SELECT order_date, amount, updated_at FROM silver.orders LIMIT 1")
        .await
        .unwrap();
    let types: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.type_().name().to_string())
        .collect();
    assert_eq!(types, ["date", "numeric", "timestamptz"]);

    // Session statements drivers send are accepted.
    for ok in [
        "BEGIN READ ONLY",
        "SET application_name = 'test'",
        "SET client_encoding = 'UTF8'",
        "SHOW TIME ZONE",
        "COMMIT",
    ] {
        client
            .simple_query(ok)
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }

    // Anything but a query is refused before it reaches the engine.
    for bad in [
        "CREATE TABLE gold.x (a INT)",
        "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO gold.daily_region_sales SELECT * FROM gold.daily_region_sales",
        "UPDATE gold.daily_region_sales SET orders = 0",
        "DELETE FROM gold.daily_region_sales",
        "DROP TABLE gold.daily_region_sales",
        "COPY (SELECT 1) TO '/tmp/lakehouse-copy.csv'",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/lakehouse-copy.csv'",
        "SET datafusion.execution.target_partitions = 1",
    ] {
        let e = client
            .simple_query(bad)
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad} was accepted"));
        let (code, message) = pg_code(&e);
        assert!(
            code == "25006" || code == "42601",
            "{bad}: {code} {message}"
        );
        assert!(
            message.contains("read-only")
                || message.contains("server setting")
                || message.contains("parse"),
            "{bad}: {message}"
        );
    }
    assert!(!Path::new("/tmp/lakehouse-copy.csv").exists());
    // Files outside the lake cannot be read by naming them.
    for read in [
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM bronze.\"../../../etc/passwd\"",
    ] {
        let e = client
            .simple_query(read)
            .await
            .err()
            .unwrap_or_else(|| panic!("{read} was accepted"));
        assert!(pg_code(&e).1.contains("not found"), "{read}: {e}");
    }

    // Time travel: version 0 of a gold table is its empty creation commit.
    let v = pg_text(
        &client,
        "SELECT count(*) FROM gold.\"daily_region_sales@v0\"",
    )
    .await;
    assert_eq!(v, [["0"]]);
    let v1 = pg_text(
        &client,
        "SELECT count(*) FROM gold.\"daily_region_sales@v1\"",
    )
    .await;
    let now = pg_text(&client, "SELECT count(*) FROM gold.daily_region_sales").await;
    assert_eq!(v1, now);
    let e = client
        .simple_query("SELECT * FROM gold.\"daily_region_sales@v99\"")
        .await
        .unwrap_err();
    assert!(pg_code(&e).1.contains("no version"), "{e}");

    // psql: \dt and \d work on the catalog, and a gold query.
    let psql = |args: &[&str]| {
        let mut with_c = vec!["-c"];
        with_c.extend_from_slice(args);
        let out = server.psql(&with_c);
        assert!(out.status.success(), "psql {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let dt = psql(&["\\dt gold.*"]);
    assert!(
        dt.contains("daily_region_sales") && dt.contains("category_daily"),
        "{dt}"
    );
    let d = psql(&["\\d gold.daily_region_sales"]);
    for col in ["order_date", "date", "revenue", "numeric", "region"] {
        assert!(d.contains(col), "\\d lacks {col}: {d}");
    }
    let q = psql(&["SELECT region, orders FROM gold.daily_region_sales WHERE region = 'east' ORDER BY order_date LIMIT 1"]);
    assert!(q.contains("east") && q.contains("(1 row)"), "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let lake = example_lake(dir.path());
    let expected = strings(&lake, BY_REGION).await;
    let server = Server::start(&lake, &[]);
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", server.http);
    let post = |accept: &'static str, sql: &'static str| {
        http.post(url("/sql"))
            .basic_auth("analyst", Some(PASSWORD))
            .header("accept", accept)
            .body(sql)
            .send()
    };

    let health = http.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let no_auth = http
        .post(url("/sql"))
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.status(), 401);
    let wrong = http
        .post(url("/sql"))
        .basic_auth("analyst", Some("nope"))
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let bad_token = http
        .post(url("/sql"))
        .bearer_auth("nope")
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), 401);

    // JSON
    let r = post("application/json", BY_REGION).await.unwrap();
    assert_eq!(r.status(), 200);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(rows.len(), 5);
    for (row, e) in rows.iter().zip(&expected) {
        assert_eq!(row["region"], e[0].as_str());
        assert_eq!(row["revenue"].to_string(), e[1]);
    }
    // CSV
    let csv = post("text/csv", BY_REGION)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "region,revenue,orders");
    assert_eq!(lines[1], expected[0].join(","));
    assert_eq!(lines.len(), 6);
    // NDJSON
    let nd = post("application/x-ndjson", BY_REGION)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(nd.lines().count(), 5);
    // Arrow IPC stream
    let ipc = post("application/vnd.apache.arrow.stream", BY_REGION)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .unwrap();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    // The partition column comes as plain strings, as over Flight SQL.
    assert_eq!(
        batches[0].schema().field(0).data_type(),
        &datafusion::arrow::datatypes::DataType::Utf8
    );
    // Parquet
    let pq = post("application/vnd.apache.parquet", BY_REGION)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(pq)
            .unwrap()
            .build()
            .unwrap();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    assert_eq!(
        batches[0].schema().field(0).data_type(),
        &datafusion::arrow::datatypes::DataType::Utf8
    );
    // An empty result in CSV still has its header, in JSON is [].
    let empty = post(
        "text/csv",
        "SELECT region FROM gold.daily_region_sales WHERE region = 'nowhere'",
    )
    .await
    .unwrap();
    assert_eq!(empty.text().await.unwrap().trim(), "region");
    let empty = post(
        "application/json",
        "SELECT region FROM gold.daily_region_sales WHERE region = 'nowhere'",
    )
    .await
    .unwrap();
    assert_eq!(empty.text().await.unwrap().trim(), "[]");
    // Unsupported Accept.
    assert_eq!(post("image/png", "SELECT 1").await.unwrap().status(), 406);

    // Refusals and errors carry a status and a message.
    let r = post("application/json", "DROP TABLE gold.daily_region_sales")
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("read-only"));
    let r = post(
        "application/json",
        "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let r = post("application/json", "SELECT * FROM '/etc/passwd'")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(
        "application/json",
        "SELECT nope FROM gold.daily_region_sales",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    // Tables.
    let tables: Vec<serde_json::Value> = http
        .get(url("/tables"))
        .basic_auth("analyst", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let gold: Vec<&serde_json::Value> = tables.iter().filter(|t| t["schema"] == "gold").collect();
    assert_eq!(gold.len(), 2, "{tables:?}");
    let t: serde_json::Value = http
        .get(url("/tables/gold/daily_region_sales"))
        .basic_auth("analyst", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(
        t["partition_columns"],
        serde_json::json!(["order_date", "region"])
    );
    let rows: u64 = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, t["rows"].as_u64().unwrap());
    assert!(t["version"].as_u64().unwrap() >= 1);
    let missing = http
        .get(url("/tables/gold/nothing"))
        .basic_auth("analyst", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_streams_arrow_to_authenticated_clients() {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let lake = example_lake(dir.path());
    let expected = strings(&lake, BY_REGION).await;
    let server = Server::start(&lake, &[]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.flight))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut anonymous = FlightSqlServiceClient::new(channel.clone());
    let e = anonymous.execute(BY_REGION.into(), None).await.unwrap_err();
    assert!(e.to_string().contains("authentication required"), "{e}");
    let e = anonymous.handshake("analyst", "wrong").await.unwrap_err();
    assert!(
        e.to_string().contains("wrong user, password or token"),
        "{e}"
    );

    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake("analyst", PASSWORD).await.unwrap();
    let info = client.execute(BY_REGION.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<RecordBatch> = client
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, expected.len());
    let regions = datafusion::arrow::compute::cast(
        batches[0].column(0),
        &datafusion::arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let regions = regions
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .unwrap();
    assert_eq!(regions.value(0), expected[0][0]);

    let e = client
        .execute("DELETE FROM gold.daily_region_sales".into(), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");

    // ADBC (the Flight SQL driver data teams use from Python), psycopg and
    // SQLAlchemy's reflection, in one script.
    let out = Command::new(super::python())
        .arg(repo().join("tests/clients.py"))
        .args([&server.flight, &server.pg, "analyst", PASSWORD])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "tests/clients.py failed:\n{}",
        text(&out)
    );
    let answers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let revenue: Vec<String> = expected.iter().map(|r| r[1].clone()).collect();
    assert_eq!(answers["adbc_revenue"], serde_json::json!(revenue));
    assert_eq!(answers["psycopg_revenue"], serde_json::json!(revenue));
    assert_eq!(
        answers["sqlalchemy_schemas"],
        serde_json::json!(["bronze", "gold", "quarantine", "silver", "system"])
    );
    assert_eq!(
        answers["sqlalchemy_gold_tables"],
        serde_json::json!(["category_daily", "daily_region_sales"])
    );
    assert!(answers["adbc_refused"]
        .as_str()
        .unwrap()
        .contains("read-only"));
    assert_eq!(answers["adbc_vendor"], "lakehouse");
    let region = |name: &str| expected.iter().find(|r| r[0] == name).unwrap()[1].clone();
    assert_eq!(
        answers["adbc_bound"],
        serde_json::json!([region("east"), region("west")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fail_one_query_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let lake = example_lake(dir.path());
    let server = Server::start(
        &lake,
        &[
            "--query-timeout",
            "1s",
            "--query-memory",
            "8M",
            "--max-queries",
            "4",
        ],
    );
    let client = server.pg().await;

    let slow = "SELECT sum(value) FROM generate_series(1, 100000000000)";
    let started = std::time::Instant::now();
    let e = client.simple_query(slow).await.unwrap_err();
    let (code, message) = pg_code(&e);
    assert_eq!(code, "57014", "{message}");
    assert!(message.contains("time limit of 1000 ms"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(20));

    let hungry = "SELECT array_agg(value) FROM generate_series(1, 10000000)";
    let e = client.simple_query(hungry).await.unwrap_err();
    let (code, message) = pg_code(&e);
    assert_eq!(code, "53200", "{message}");
    assert!(
        message.contains("per-query memory limit of 8 MiB"),
        "{message}"
    );

    // The same connection and others still answer.
    assert_eq!(
        pg_text(&client, "SELECT count(*) FROM gold.category_daily")
            .await
            .len(),
        1
    );
    let http = reqwest::Client::new()
        .post(format!("http://{}/sql", server.http))
        .basic_auth("analyst", Some(PASSWORD))
        .body(slow)
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 504);
}

/// 32 clients query while `lakehouse run` commits new data: no errors, and
/// every answer is the figure of a committed version (before or after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_during_a_run_see_committed_versions_only() {
    let dir = tempfile::tempdir().unwrap();
    let lake = example_lake(dir.path());
    let total = "SELECT CAST(sum(orders) AS BIGINT) FROM gold.daily_region_sales";
    let before = super::one(&lake, total).await;
    let server = Server::start(&lake, &["--max-queries", "8"]);

    // New orders land: a copy of a landing file under a new name, its
    // order ids shifted so they are new orders.
    let landing = lake.join("landing/orders");
    let src = landing.join("orders_00001.csv");
    let body = std::fs::read_to_string(&src).unwrap();
    let mut lines = body.lines();
    let header = lines.next().unwrap();
    let mut shifted = String::from(header);
    shifted.push('\n');
    for l in lines {
        let (id, rest) = l.split_once(',').unwrap();
        shifted.push_str(&format!("X{id},{rest}\n"));
    }
    std::fs::write(landing.join("orders_late_batch.csv"), shifted).unwrap();

    let mut clients = Vec::new();
    for _ in 0..32 {
        let (client, conn) =
            tokio_postgres::connect(&server.pg_config(PASSWORD), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        clients.push(client);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in clients {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || seen.is_empty() {
                let rows = client
                    .query(total, &[])
                    .await
                    .expect("no query fails during a run");
                seen.push(rows[0].get::<_, i64>(0));
            }
            seen
        }));
    }
    let lake2 = lake.clone();
    let run = tokio::task::spawn_blocking(move || {
        lakehouse(
            &[
                "--lake",
                lake2.to_str().unwrap(),
                "run",
                "--pipeline",
                repo().join("sql").to_str().unwrap(),
            ],
            &lake2,
        )
    })
    .await
    .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let after = super::one(&lake, total).await;
    assert!(after > before, "the run added orders ({before} -> {after})");
    let mut answers = 0;
    for t in tasks {
        for v in t.await.unwrap() {
            assert!(
                v == before || v == after,
                "{v} is neither {before} nor {after}"
            );
            answers += 1;
        }
    }
    assert!(answers >= 32);
    // The next query sees the new version without a restart.
    let client = server.pg().await;
    assert_eq!(pg_text(&client, total).await, [[after.to_string()]]);
}

#[test]
fn no_password_is_refused_off_loopback_and_tls_works() {
    let dir = tempfile::tempdir().unwrap();
    let lake = example_lake(dir.path());

    // Without a password, a non-loopback address is refused at start.
    let out = Command::new(env!("CARGO_BIN_EXE_lakehouse"))
        .args(["--lake", lake.to_str().unwrap(), "serve"])
        .args([
            "--pg-addr",
            "0.0.0.0:0",
            "--flight-addr",
            "off",
            "--http-addr",
            "off",
        ])
        .env_remove("LAKEHOUSE_PASSWORD")
        .env_remove("LAKEHOUSE_TOKEN")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("without a password"), "{}", text(&out));

    // TLS on Postgres wire with a self-signed certificate.
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let gen = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes a test certificate");
    assert!(gen.status.success(), "{}", text(&gen));
    let server = Server::start(
        &lake,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let (host, port) = server.pg.rsplit_once(':').unwrap();
    let out = Command::new("psql")
        .arg(format!(
            "host={host} port={port} user=analyst dbname=lakehouse sslmode=require"
        ))
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT count(*) FROM gold.daily_region_sales",
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "psql over TLS: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap()
            > 0
    );
}

/// What BI tools send: Postgres date patterns (Superset's time filters),
/// LIMIT over partition columns only, an unknown table; and what an
/// attacker sends: expressions nested thousands deep, huge IN lists,
/// gigabyte strings, a look at pg_authid. Every answer is checked, and the
/// server still answers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bi_queries_get_postgres_answers_and_no_query_ends_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let lake = example_lake(dir.path());
    let server = Server::start(&lake, &["--query-memory", "512M"]);
    let client = server.pg().await;

    // LIMIT when only partition columns are read (answered from the log).
    for (sql, rows) in [
        ("SELECT region FROM gold.daily_region_sales LIMIT 1", 1),
        (
            "SELECT order_date, region FROM gold.daily_region_sales LIMIT 3",
            3,
        ),
        (
            "SELECT region FROM gold.daily_region_sales LIMIT 2 OFFSET 1",
            2,
        ),
    ] {
        assert_eq!(pg_text(&client, sql).await.len(), rows, "{sql}");
    }
    let direct = lakehouse(
        &[
            "--lake",
            lake.to_str().unwrap(),
            "query",
            "--format",
            "csv",
            "SELECT region FROM gold.daily_region_sales LIMIT 1",
        ],
        dir.path(),
    );
    assert!(direct.status.success(), "{}", text(&direct));
    assert_eq!(String::from_utf8_lossy(&direct.stdout).lines().count(), 2);

    // Postgres patterns mean what they mean in Postgres.
    let months = pg_text(
        &client,
        "SELECT to_char(order_date, 'YYYY-MM') AS m, count(*) FROM gold.daily_region_sales GROUP BY 1 ORDER BY 1",
    )
    .await;
    let expected = strings(
        &lake,
        "SELECT substr(CAST(order_date AS VARCHAR), 1, 7) AS m, CAST(count(*) AS VARCHAR) FROM gold.daily_region_sales GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(months, expected);
    assert!(months.iter().all(|r| r[0] != "YYYY-MM"), "{months:?}");
    let first = strings(
        &lake,
        "SELECT CAST(min(order_date) AS VARCHAR), CAST(count(*) AS VARCHAR), \
         CAST(count(*) FILTER (WHERE order_date > (SELECT min(order_date) FROM gold.daily_region_sales)) AS VARCHAR) \
         FROM gold.daily_region_sales",
    )
    .await
    .remove(0);
    let (min, all, after) = (&first[0], &first[1], &first[2]);
    assert_ne!(all, after, "the first day has rows");
    let by_date = pg_text(
        &client,
        &format!(
            "SELECT count(*) FROM gold.daily_region_sales WHERE order_date >= TO_DATE('{min}', 'YYYY-MM-DD')"
        ),
    )
    .await;
    assert_eq!(by_date, [[all.clone()]]);
    // Superset's time-range filter, exactly as it sends it.
    let superset = pg_text(
        &client,
        &format!(
            "SELECT count(*) FROM gold.daily_region_sales WHERE order_date > TO_TIMESTAMP('{min} 00:00:00.000000', 'YYYY-MM-DD HH24:MI:SS.US')"
        ),
    )
    .await;
    assert_eq!(superset, [[after.clone()]]);
    let ts = pg_text(
        &client,
        "SELECT CAST(TO_TIMESTAMP('2026-03-01 10:20:30.123456', 'YYYY-MM-DD HH24:MI:SS.US') AS VARCHAR), \
         to_char(TO_DATE('01/03/2026', 'DD/MM/YYYY'), 'FMDD Mon YYYY'), \
         to_char(TIMESTAMP '2026-03-01 14:05:09', 'HH24:MI:SS HH12 AM'), \
         to_char(DATE '2026-03-01', '%Y/%m')",
    )
    .await;
    assert_eq!(
        ts,
        [[
            "2026-03-01T10:20:30.123456",
            "1 Mar 2026",
            "14:05:09 02 PM",
            "2026/03"
        ]]
    );

    // information_schema.columns in Postgres's type names, numbered from 1.
    assert_eq!(
        pg_text(
            &client,
            "SELECT column_name, ordinal_position, data_type, udt_name FROM information_schema.columns \
             WHERE table_schema = 'gold' AND table_name = 'daily_region_sales' ORDER BY ordinal_position",
        )
        .await,
        [
            ["order_date", "1", "date", "date"],
            ["region", "2", "text", "text"],
            ["orders", "3", "bigint", "int8"],
            ["units", "4", "bigint", "int8"],
            ["revenue", "5", "numeric", "numeric"],
            ["returns", "6", "bigint", "int8"],
            ["avg_order_value", "7", "numeric", "numeric"],
        ]
    );

    // An unknown table is undefined_table, as in Postgres.
    let e = client
        .simple_query("SELECT * FROM gold.no_such_table")
        .await
        .unwrap_err();
    assert_eq!(pg_code(&e).0, "42P01", "{e}");

    // No role secrets, not even a stand-in.
    assert_eq!(
        pg_text(&client, "SELECT count(*) FROM pg_catalog.pg_authid").await,
        [["0"]]
    );

    // Deep expressions: under the limit they are answered, over it refused
    // with a clear error, and the process lives either way.
    let sum = |n: usize| format!("SELECT {}", vec!["1"; n].join("+"));
    assert_eq!(pg_text(&client, &sum(900)).await, [["900"]]);
    for n in [2_000, 20_000] {
        let e = client.simple_query(&sum(n)).await.unwrap_err();
        let (code, message) = pg_code(&e);
        assert_eq!(code, "54001", "{message}");
        assert!(message.contains("levels deep"), "{message}");
    }
    let nested = format!("SELECT {}1{}", "(".repeat(3_000), ")".repeat(3_000));
    assert!(client.simple_query(&nested).await.is_err());
    let http = reqwest::Client::new()
        .post(format!("http://{}/sql", server.http))
        .basic_auth("analyst", Some(PASSWORD))
        .body(sum(5_000))
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 400);
    assert!(http.text().await.unwrap().contains("levels deep"));

    // A BI tool's IN list of 10,000 values is answered.
    let values: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let in_list = pg_text(
        &client,
        &format!(
            "SELECT count(*) FROM gold.daily_region_sales WHERE orders IN ({})",
            values.join(", ")
        ),
    )
    .await;
    let range = pg_text(
        &client,
        "SELECT count(*) FROM gold.daily_region_sales WHERE orders >= 0 AND orders < 10000",
    )
    .await;
    assert_eq!(in_list, range);

    // A gigabyte string is refused before it is built.
    let started = std::time::Instant::now();
    for sql in [
        "SELECT length(repeat('x', 2000000000))",
        "SELECT length(repeat(region, 100000000)) FROM gold.daily_region_sales",
        "SELECT length(lpad('x', 2000000000))",
    ] {
        let e = client.simple_query(sql).await.unwrap_err();
        let (code, message) = pg_code(&e);
        assert_eq!(code, "53200", "{sql}: {message}");
        assert!(message.contains("MiB of text"), "{sql}: {message}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        pg_text(&client, "SELECT length(repeat('ab', 1000))").await,
        [["2000"]]
    );

    // SET search_path: unqualified names resolve along it, for this
    // connection only; current_schema() follows.
    let silver_rows = strings(&lake, "SELECT CAST(count(*) AS VARCHAR) FROM silver.orders").await;
    let gold_rows = strings(
        &lake,
        "SELECT CAST(count(*) AS VARCHAR) FROM gold.daily_region_sales",
    )
    .await;
    let other = server.pg().await;
    other
        .simple_query("SET search_path = silver, gold")
        .await
        .unwrap();
    assert_eq!(
        pg_text(&other, "SELECT count(*) FROM orders").await,
        silver_rows
    );
    assert_eq!(
        pg_text(&other, "SELECT count(*) FROM daily_region_sales").await,
        gold_rows
    );
    assert_eq!(
        pg_text(&other, "SELECT current_schema()").await,
        [["silver"]]
    );
    let rows = other
        .query("SELECT count(*) FROM orders WHERE region = $1", &[&"east"])
        .await
        .unwrap();
    let east: i64 = rows[0].get(0);
    let expected_east = strings(
        &lake,
        "SELECT CAST(count(*) AS VARCHAR) FROM silver.orders WHERE region = 'east'",
    )
    .await;
    assert_eq!(east.to_string(), expected_east[0][0]);
    let e = client
        .simple_query("SELECT count(*) FROM orders")
        .await
        .unwrap_err();
    assert_eq!(
        pg_code(&e).0,
        "42P01",
        "another connection's search_path leaked: {e}"
    );

    // Still serving, on the same connection and a new one.
    assert_eq!(pg_text(&client, "SELECT 1").await, [["1"]]);
    assert_eq!(pg_text(&server.pg().await, "SELECT 2").await, [["2"]]);
}

/// The Go Flight SQL driver under ADBC sends basic auth without base64
/// padding; `user:password` of every length mod 3 must log in (the suite's
/// own password once passed only by the luck of its length).
#[test]
fn adbc_flight_sql_logs_in_with_passwords_of_every_length() {
    let dir = tempfile::tempdir().unwrap();
    let lake = example_lake(dir.path());
    const CONNECT: &str = r#"
import sys, adbc_driver_flightsql.dbapi as flightsql
with flightsql.connect(f"grpc://{sys.argv[1]}", db_kwargs={"username": "analyst", "password": sys.argv[2]}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM gold.daily_region_sales")
        print(cur.fetch_arrow_table().column("n")[0].as_py())
"#;
    let rows = crate::block_on_one(&lake, "SELECT count(*) FROM gold.daily_region_sales");
    // "analyst:" is 8 bytes: 8 + 13, 8 + 14, 8 + 15 cover every length mod 3.
    for password in ["correct horse", "correct horse!", "correct horse!!"] {
        let server = Server::start(&lake, &["--password", password]);
        let out = Command::new(super::python())
            .args(["-c", CONNECT, &server.flight, password])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "password of {} bytes: {}",
            password.len(),
            text(&out)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            rows.to_string(),
            "password of {} bytes",
            password.len()
        );
        let wrong = Command::new(super::python())
            .args(["-c", CONNECT, &server.flight, &format!("{password}x")])
            .output()
            .unwrap();
        assert!(!wrong.status.success(), "a wrong password logged in");
    }
}

/// The Postgres client matrix BI tools stand on, each checked against the
/// Delta figures: SQLAlchemy 2.x + psycopg and 1.4 + psycopg2 (Superset's
/// stack) Inspector calls, pandas.read_sql_table, psycopg's named cursor and
/// COPY TO STDOUT (text, CSV, binary), connectorx, the ADBC Postgres driver
/// with a bound parameter, pgjdbc's DatabaseMetaData (DBeaver, Metabase,
/// Tableau), and psql's `\d+`, `FETCH_COUNT` and `\copy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_drivers_and_bi_tools_get_the_delta_figures() {
    let dir = tempfile::tempdir().unwrap();
    let lake = example_lake(dir.path());
    let server = Server::start(&lake, &[]);
    let by_region = strings(
        &lake,
        "SELECT region, CAST(sum(revenue) AS VARCHAR), CAST(count(*) AS VARCHAR) \
         FROM gold.daily_region_sales GROUP BY region ORDER BY region",
    )
    .await;
    let all_rows = strings(
        &lake,
        "SELECT region, CAST(revenue AS VARCHAR) FROM gold.daily_region_sales ORDER BY order_date, region",
    )
    .await;
    let total: usize = all_rows.len();
    let total_revenue = strings(
        &lake,
        "SELECT CAST(sum(revenue) AS VARCHAR) FROM gold.daily_region_sales",
    )
    .await[0][0]
        .clone();

    let run = |sa14: bool| {
        let mut cmd = Command::new(super::python());
        cmd.arg(repo().join("tests/pg_clients.py"))
            .args([&server.pg, "analyst", PASSWORD]);
        if sa14 {
            cmd.arg("sa14").env("PYTHONPATH", repo().join(".venv/sa14"));
        }
        let out = cmd.output().expect("python runs");
        assert!(
            out.status.success(),
            "tests/pg_clients.py {sa14}:\n{}",
            text(&out)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let expected_columns = serde_json::json!([
        ["order_date", "DATE", true],
        ["region", "TEXT", true],
        ["orders", "BIGINT", true],
        ["units", "BIGINT", true],
        ["revenue", "NUMERIC", true],
        ["returns", "BIGINT", true],
        ["avg_order_value", "NUMERIC", true]
    ]);
    let sql_rows: Vec<serde_json::Value> = by_region
        .iter()
        .map(|r| serde_json::json!([r[0], r[1], r[2].parse::<u64>().unwrap()]))
        .collect();
    for (sa14, version) in [(false, "2."), (true, "1.4")] {
        let a = run(sa14);
        assert!(
            a["sqlalchemy_version"]
                .as_str()
                .unwrap()
                .starts_with(version),
            "{}",
            a["sqlalchemy_version"]
        );
        assert_eq!(a["columns"], expected_columns, "SQLAlchemy {version}");
        for empty in ["pk", "fks", "indexes", "unique", "checks", "views"] {
            assert_eq!(a[empty], serde_json::json!([]), "{empty} on {version}");
        }
        assert_eq!(a["has_table"], true);
        assert_eq!(
            a["sqlalchemy_keys"],
            serde_json::json!(["region", "sum", "count"])
        );
        assert_eq!(
            a["sqlalchemy_rows"],
            serde_json::json!(sql_rows),
            "{version}"
        );
        assert_eq!(a["streamed_rows"], total, "{version}");
        if sa14 {
            continue;
        }
        assert_eq!(a["pandas_shape"], serde_json::json!([total, 7]));
        assert_eq!(a["pandas_revenue"], total_revenue);
        assert_eq!(a["named_cursor_rows"], total);
        for fmt in ["text", "csv", "binary"] {
            assert_eq!(a["copy"][fmt], serde_json::json!(all_rows), "COPY {fmt}");
        }
        let scaled: Vec<String> = by_region
            .iter()
            .map(|r| format!("{}00000000", r[1]))
            .collect();
        // connectorx maps numeric to decimal(38,10) whatever the server
        // says (it does against Postgres too); the values are exact.
        assert_eq!(a["connectorx_revenue"], serde_json::json!(scaled));
        let east = by_region.iter().find(|r| r[0] == "east").unwrap();
        assert_eq!(a["adbc_pg_east"], serde_json::json!([east[1]]));
    }

    // pgjdbc, as DBeaver, Metabase and Tableau call it.
    let classes = dir.path().join("jdbc");
    std::fs::create_dir_all(&classes).unwrap();
    let javac = Command::new("javac")
        .args(["-d", classes.to_str().unwrap()])
        .arg(repo().join("tests/jdbc/Metadata.java"))
        .output()
        .expect("javac is installed (scripts/setup installs a JDK)");
    assert!(javac.status.success(), "{}", text(&javac));
    let (host, port) = server.pg.rsplit_once(':').unwrap();
    let jdbc = Command::new("java")
        .arg("-cp")
        .arg(format!(
            "/usr/share/java/postgresql.jar:{}",
            classes.display()
        ))
        .args(["Metadata", host, port, "analyst", PASSWORD])
        .output()
        .expect("java runs");
    assert!(jdbc.status.success(), "pgjdbc:\n{}", text(&jdbc));
    let jdbc = String::from_utf8_lossy(&jdbc.stdout).to_string();
    let east = &by_region.iter().find(|r| r[0] == "east").unwrap()[1];
    for line in [
        "product=PostgreSQL 16",
        "tables=2",
        "column=revenue:numeric",
        "column=order_date:date",
        "primary_keys=0",
        "indexes=0",
        "imported_keys=0",
        "exported_keys=0",
        "type_info=true",
        "functions=true",
        "result_columns=region,sum",
        "sum_type=numeric(28,2)",
        &format!("east_revenue={east}"),
    ] {
        assert!(
            jdbc.lines().any(|l| l == line),
            "pgjdbc lacks `{line}`:\n{jdbc}"
        );
    }

    // psql: \d+, FETCH_COUNT (a cursor underneath) and \copy.
    let psql = |args: &[&str]| {
        let out = server.psql(args);
        assert!(out.status.success(), "psql {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let d = psql(&["-c", "\\d+ gold.daily_region_sales"]);
    assert!(d.contains("revenue") && d.contains("numeric"), "{d}");
    let fetched = psql(&[
        "-A",
        "-t",
        "-v",
        "FETCH_COUNT=7",
        "-c",
        "SELECT region, CAST(revenue AS VARCHAR) FROM gold.daily_region_sales ORDER BY order_date, region",
    ]);
    let fetched: Vec<Vec<String>> = fetched
        .lines()
        .map(|l| l.split('|').map(String::from).collect())
        .collect();
    assert_eq!(fetched, all_rows);
    let copied = psql(&[
        "-c",
        "\\copy (SELECT region, revenue FROM gold.daily_region_sales ORDER BY order_date, region) TO STDOUT WITH (FORMAT csv)",
    ]);
    let copied: Vec<Vec<String>> = copied
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert_eq!(copied, all_rows);
    // Writes are still refused, COPY FROM and COPY to a file included.
    for bad in [
        "COPY gold.daily_region_sales FROM STDIN",
        "COPY (SELECT 1) TO '/tmp/lakehouse-copy-test'",
    ] {
        let out = server.psql(&["-c", bad]);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(text(&out).contains("read-only"), "{bad}: {}", text(&out));
    }
}

/// An address in use is named with the flag that changes it.
#[test]
fn an_address_in_use_names_the_flag_that_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (flag, what) in [
        ("--pg-addr", "postgres"),
        ("--flight-addr", "flight"),
        ("--http-addr", "http"),
    ] {
        let mut args = vec![
            "--lake",
            lake.to_str().unwrap(),
            "serve",
            "--pg-addr",
            "127.0.0.1:0",
            "--flight-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ];
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = &addr;
        let out = lakehouse(&args, dir.path());
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains(&format!("cannot listen for {what} on {addr}"))
                && t.contains(&format!("with {flag}")),
            "{t}"
        );
    }
}
