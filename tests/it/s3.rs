//! The job and the server on S3, against a real S3-compatible server (moto's
//! server mode, started by scripts/test and named by LAKEHOUSE_TEST_S3):
//! the example pipeline from landing files in a bucket to gold with the same
//! figures as on local disk, an idempotent re-run, `query`, `tables` and
//! `serve` over the S3 lake, and concurrent committers on one table.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use object_store::{ObjectStore, ObjectStoreExt};

use super::{repo, text};

fn endpoint() -> String {
    std::env::var("LAKEHOUSE_TEST_S3").unwrap_or_else(|_| {
        panic!(
            "LAKEHOUSE_TEST_S3 is not set: run the suite with scripts/test, which starts the \
             S3 test server, or start one (.venv/bin/moto_server -p 5555) and set \
             LAKEHOUSE_TEST_S3=http://127.0.0.1:5555"
        )
    })
}

fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

fn storage_options() -> HashMap<String, String> {
    aws_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A new bucket with a unique name.
async fn bucket() -> String {
    let name = format!("lake-{}", uuid::Uuid::new_v4().simple());
    let r = reqwest::Client::new()
        .put(format!("{}/{name}", endpoint()))
        .send()
        .await
        .expect("the S3 test server answers");
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    name
}

fn store(bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap(),
    )
}

async fn upload_dir(store: &dyn ObjectStore, from: &Path, prefix: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = format!("{prefix}/{}", e.file_name().to_str().unwrap());
        if e.file_type().unwrap().is_dir() {
            n += Box::pin(upload_dir(store, &e.path(), &name)).await;
        } else {
            let bytes = std::fs::read(e.path()).unwrap();
            store
                .put(&name.as_str().into(), bytes.into())
                .await
                .unwrap();
            n += 1;
        }
    }
    n
}

fn lakehouse_s3(args: &[&str], cwd: &Path) -> Output {
    lakehouse_s3_with(args, cwd, &[])
}

/// [`lakehouse_s3`] with more environment.
fn lakehouse_s3_with(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lakehouse"));
    c.args(args).current_dir(cwd).env("RUST_LOG", "warn");
    for (k, v) in aws_env() {
        c.env(k, v);
    }
    c.envs(env.iter().copied());
    c.output().expect("the lakehouse binary runs")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

const FIGURES: [&str; 3] = [
    "SELECT region, sum(orders), sum(units), sum(revenue), sum(returns) FROM gold.daily_region_sales GROUP BY region ORDER BY region",
    "SELECT category, sum(revenue), sum(units) FROM gold.category_daily GROUP BY category ORDER BY category",
    "SELECT count(*), count(DISTINCT order_id), sum(amount) FROM silver.orders",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_pipeline_on_s3_gives_the_local_figures() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = repo().join("sql");
    let pipeline = pipeline.to_str().unwrap();

    // Local run.
    let local = dir.path().join("lake");
    super::serve::copy_dir(&repo().join("lake/landing"), &local.join("landing"));
    ok(lakehouse_s3(
        &[
            "--lake",
            local.to_str().unwrap(),
            "run",
            "--pipeline",
            pipeline,
        ],
        dir.path(),
    ));

    // The same landing files in a bucket.
    let bucket = bucket().await;
    let files = upload_dir(
        store(&bucket).as_ref(),
        &repo().join("lake/landing"),
        "retail/landing",
    )
    .await;
    assert!(files >= 4);
    let uri = format!("s3://{bucket}/retail");
    let summary = ok(lakehouse_s3(
        &["--lake", &uri, "run", "--pipeline", pipeline],
        dir.path(),
    ));
    assert!(summary.contains("succeeded"), "{summary}");

    for q in FIGURES {
        let l = ok(lakehouse_s3(
            &[
                "--lake",
                local.to_str().unwrap(),
                "query",
                "--format",
                "csv",
                q,
            ],
            dir.path(),
        ));
        let s = ok(lakehouse_s3(
            &["--lake", &uri, "query", "--format", "csv", q],
            dir.path(),
        ));
        assert_eq!(s, l, "{q}");
        assert!(l.lines().count() > 1);
    }

    // The server answers over the S3 lake.
    let server = super::serve::Server::start_uri(&uri, dir.path(), &[], &aws_env());
    let client = server.pg().await;
    let q = "SELECT CAST(sum(orders) AS BIGINT) FROM gold.daily_region_sales";
    let local_total = ok(lakehouse_s3(
        &[
            "--lake",
            local.to_str().unwrap(),
            "query",
            "--format",
            "csv",
            q,
        ],
        dir.path(),
    ));
    let served = super::serve::pg_text(&client, q).await;
    assert_eq!(served[0][0], local_total.lines().nth(1).unwrap());
    drop(server);

    // A re-run with nothing new changes no data table.
    let data_tables = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| {
                l.starts_with("bronze.") || l.starts_with("silver.") || l.starts_with("gold.")
            })
            .map(String::from)
            .collect()
    };
    let before = data_tables(&ok(lakehouse_s3(&["--lake", &uri, "tables"], dir.path())));
    assert_eq!(before.len(), 7, "{before:?}");
    ok(lakehouse_s3(
        &["--lake", &uri, "run", "--pipeline", pipeline],
        dir.path(),
    ));
    let after = data_tables(&ok(lakehouse_s3(&["--lake", &uri, "tables"], dir.path())));
    assert_eq!(before, after);

    // A new landing file is ingested incrementally on S3 too.
    let extra =
        std::fs::read_to_string(repo().join("lake/landing/orders/orders_00001.csv")).unwrap();
    let mut shifted = String::new();
    for (i, l) in extra.lines().enumerate() {
        if i == 0 {
            shifted.push_str(l);
        } else {
            shifted.push_str(&format!("Z{l}"));
        }
        shifted.push('\n');
    }
    store(&bucket)
        .put(
            &"retail/landing/orders/orders_late.csv".into(),
            shifted.into_bytes().into(),
        )
        .await
        .unwrap();
    let summary = ok(lakehouse_s3(
        &["--lake", &uri, "run", "--pipeline", pipeline],
        dir.path(),
    ));
    assert!(summary.contains("(1 new file)"), "{summary}");

    // A bucket that does not exist: a clear error naming the URI.
    let out = lakehouse_s3(
        &["--lake", "s3://no-such-bucket-here/x", "tables"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(
        t.contains("s3://no-such-bucket-here/x") && t.contains("NoSuchBucket"),
        "{t}"
    );
    assert!(
        !t.contains("AWS_SECRET_ACCESS_KEY") && !t.contains("=test"),
        "{t}"
    );
}

/// Four writers commit to one S3 table at the same time: Delta's
/// put-if-absent commits make each land in its own version, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_on_s3_all_land() {
    deltalake::aws::register_handlers(None);
    let bucket = bucket().await;
    let url = url::Url::parse(&format!("s3://{bucket}/t/")).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "writer",
        DataType::Int64,
        false,
    )]));
    let batch = |w: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![w; 100]))],
        )
        .unwrap()
    };
    let ops =
        deltalake::DeltaTable::try_from_url_with_storage_options(url.clone(), storage_options())
            .await
            .unwrap();
    ops.write(vec![batch(0)]).await.unwrap();

    let mut tasks = Vec::new();
    for w in 1..=4i64 {
        let (url, b) = (url.clone(), batch(w));
        tasks.push(tokio::spawn(async move {
            let ops =
                deltalake::DeltaTable::try_from_url_with_storage_options(url, storage_options())
                    .await
                    .unwrap();
            ops.write(vec![b]).await.map(|t| t.version())
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(
            t.await
                .unwrap()
                .expect("every concurrent commit lands")
                .unwrap(),
        );
    }
    versions.sort();
    assert_eq!(versions, [1, 2, 3, 4]);

    let lake =
        lakehouse::storage::Lake::open(&format!("s3://{bucket}/"), storage_options()).unwrap();
    let table = lakehouse::delta::open(&lake.url("t"), lake.storage_options())
        .await
        .unwrap()
        .unwrap();
    let (rows, files, _) = lakehouse::delta::row_count(&table).await.unwrap();
    assert_eq!((rows, files, table.version()), (500, 5, Some(4)));
}

/// Counts of the requests a proxy passed on, by kind, and how many it failed.
#[derive(Default, Debug)]
pub struct Counts {
    pub get: std::sync::atomic::AtomicU64,
    pub put: std::sync::atomic::AtomicU64,
    pub list: std::sync::atomic::AtomicU64,
    pub other: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

/// An HTTP proxy in front of the S3 test server that answers `503 SlowDown`
/// (before forwarding, as S3 does when throttling) to one request in
/// `fail_one_in`, and counts the requests by kind.
async fn faulty_proxy(fail_one_in: u64) -> (String, Arc<Counts>) {
    use std::sync::atomic::Ordering::Relaxed;
    let counts = Arc::new(Counts::default());
    let upstream = endpoint();
    let client = reqwest::Client::new();
    let c = counts.clone();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (client, upstream, c, seq) = (client.clone(), upstream.clone(), c.clone(), seq.clone());
        async move {
            let n = seq.fetch_add(1, Relaxed);
            // A fixed pseudo-random pattern: reproducible, about 1 in `fail_one_in`.
            let roll = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            if fail_one_in > 0 && roll % fail_one_in == 0 {
                c.failed.fetch_add(1, Relaxed);
                return axum::response::Response::builder()
                    .status(503)
                    .body(axum::body::Body::from(
                        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
                    ))
                    .unwrap();
            }
            let (parts, body) = req.into_parts();
            let query = parts.uri.query().unwrap_or("");
            match parts.method.as_str() {
                "GET" if query.contains("list-type") => &c.list,
                "GET" | "HEAD" => &c.get,
                "PUT" | "POST" => &c.put,
                _ => &c.other,
            }
            .fetch_add(1, Relaxed);
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
            let mut r = client.request(method, format!("{upstream}{}", parts.uri));
            for (k, v) in parts.headers.iter() {
                if k.as_str() != "host" && k.as_str() != "content-length" {
                    r = r.header(k.as_str(), v.as_bytes());
                }
            }
            let resp = r.body(bytes.to_vec()).send().await.unwrap();
            let mut out = axum::response::Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers().iter() {
                if k.as_str() != "transfer-encoding" && k.as_str() != "content-length" {
                    out = out.header(k.as_str(), v.as_bytes());
                }
            }
            out.body(axum::body::Body::from(resp.bytes().await.unwrap())).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), counts)
}

/// One request in ten fails with 503: the run retries them and ends with the
/// same figures as a run without faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenth_of_s3_requests_failing_changes_nothing() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = repo().join("sql");
    let pipeline = pipeline.to_str().unwrap();
    let local = dir.path().join("lake");
    super::serve::copy_dir(&repo().join("lake/landing"), &local.join("landing"));
    ok(lakehouse_s3(
        &[
            "--lake",
            local.to_str().unwrap(),
            "run",
            "--pipeline",
            pipeline,
        ],
        dir.path(),
    ));

    let bucket = bucket().await;
    upload_dir(
        store(&bucket).as_ref(),
        &repo().join("lake/landing"),
        "retail/landing",
    )
    .await;
    let uri = format!("s3://{bucket}/retail");
    let (proxy, counts) = faulty_proxy(10).await;
    let run = |args: Vec<String>| {
        let proxy = proxy.clone();
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_lakehouse"));
            c.args(&args).current_dir(&dir).env("RUST_LOG", "warn");
            for (k, v) in aws_env() {
                c.env(k, v);
            }
            c.env("AWS_ENDPOINT_URL", proxy);
            c.output().unwrap()
        })
    };
    let out = run(vec![
        "--lake".into(),
        uri.clone(),
        "run".into(),
        "--pipeline".into(),
        pipeline.into(),
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let failed = counts.failed.load(Relaxed);
    let passed = counts.get.load(Relaxed)
        + counts.put.load(Relaxed)
        + counts.list.load(Relaxed)
        + counts.other.load(Relaxed);
    assert!(
        failed * 20 > passed,
        "the proxy failed {failed} of {} requests",
        failed + passed
    );
    eprintln!(
        "faulty run: {} GET/HEAD, {} PUT/POST, {} LIST, {} other passed; {failed} failed with 503",
        counts.get.load(Relaxed),
        counts.put.load(Relaxed),
        counts.list.load(Relaxed),
        counts.other.load(Relaxed)
    );
    for q in FIGURES {
        let l = ok(lakehouse_s3(
            &[
                "--lake",
                local.to_str().unwrap(),
                "query",
                "--format",
                "csv",
                q,
            ],
            dir.path(),
        ));
        let s = ok(lakehouse_s3(
            &["--lake", &uri, "query", "--format", "csv", q],
            dir.path(),
        ));
        assert_eq!(s, l, "{q}");
    }
}

/// The cluster on S3: a scheduler and two executors that reach the bucket
/// with their own credentials (environment; nothing in the plans), the
/// example pipeline from landing files in the bucket to gold, the figures
/// of a local run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_pipeline_on_s3_through_a_cluster_gives_the_local_figures() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = repo().join("sql");
    let pipeline = pipeline.to_str().unwrap();
    let local = dir.path().join("lake");
    super::serve::copy_dir(&repo().join("lake/landing"), &local.join("landing"));
    ok(lakehouse_s3(
        &[
            "--lake",
            local.to_str().unwrap(),
            "run",
            "--pipeline",
            pipeline,
        ],
        dir.path(),
    ));
    let bucket = bucket().await;
    upload_dir(
        store(&bucket).as_ref(),
        &repo().join("lake/landing"),
        "retail/landing",
    )
    .await;
    let uri = format!("s3://{bucket}/retail");

    let (_scheduler, address) = super::cluster::scheduler(dir.path());
    let _executors: Vec<super::cluster::Node> = (0..2)
        .map(|i| {
            // Killed at the end: their shuffle files stay in the test's folder.
            let work = dir.path().join(format!("executor-{i}"));
            std::fs::create_dir_all(&work).unwrap();
            super::cluster::Node(super::cluster::node_with(
                &[
                    "executor",
                    "--scheduler",
                    &address,
                    "--slots",
                    "2",
                    "--work-dir",
                    work.to_str().unwrap(),
                ],
                dir.path(),
                &aws_env(),
            ))
        })
        .collect();
    // The executors read the landed files from the bucket in pieces of
    // about 5 KB (each piece reads the bytes before it to count lines).
    let out = lakehouse_s3_with(
        &[
            "--lake",
            &uri,
            "run",
            "--pipeline",
            pipeline,
            "--cluster",
            &address,
        ],
        dir.path(),
        &[("LAKEHOUSE_INGEST_SPLIT_BYTES", "5000")],
    );
    // The pieces met: no file fell back to a whole reading.
    let log = text(&out);
    assert!(!log.contains("could not be split"), "{log}");
    let summary = ok(out);
    assert!(summary.contains("succeeded"), "{summary}");
    let lines = [
        "SELECT _source_file, count(*), sum(_source_line), sum(length(order_id)) FROM bronze.orders GROUP BY 1 ORDER BY 1",
        "SELECT _source_file, count(*), sum(_source_line), sum(_byte_offset) FROM quarantine.bronze_orders GROUP BY 1 ORDER BY 1",
    ];
    for q in FIGURES.iter().chain(&lines) {
        let l = ok(lakehouse_s3(
            &[
                "--lake",
                local.to_str().unwrap(),
                "query",
                "--format",
                "csv",
                q,
            ],
            dir.path(),
        ));
        let s = ok(lakehouse_s3(
            &[
                "--lake",
                &uri,
                "query",
                "--format",
                "csv",
                "--cluster",
                &address,
                q,
            ],
            dir.path(),
        ));
        assert_eq!(s, l, "{q}");
        assert!(l.lines().count() > 1);
    }
}
