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
    aws_env().into_iter().map(|(k, v)| (k.to_string(), v)).collect()
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
            store.put(&name.as_str().into(), bytes.into()).await.unwrap();
            n += 1;
        }
    }
    n
}

fn lakehouse_s3(args: &[&str], cwd: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lakehouse"));
    c.args(args).current_dir(cwd).env("RUST_LOG", "warn");
    for (k, v) in aws_env() {
        c.env(k, v);
    }
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
    ok(lakehouse_s3(&["--lake", local.to_str().unwrap(), "run", "--pipeline", pipeline], dir.path()));

    // The same landing files in a bucket.
    let bucket = bucket().await;
    let files = upload_dir(store(&bucket).as_ref(), &repo().join("lake/landing"), "retail/landing").await;
    assert!(files >= 4);
    let uri = format!("s3://{bucket}/retail");
    let summary = ok(lakehouse_s3(&["--lake", &uri, "run", "--pipeline", pipeline], dir.path()));
    assert!(summary.contains("succeeded"), "{summary}");

    for q in FIGURES {
        let l = ok(lakehouse_s3(&["--lake", local.to_str().unwrap(), "query", "--format", "csv", q], dir.path()));
        let s = ok(lakehouse_s3(&["--lake", &uri, "query", "--format", "csv", q], dir.path()));
        assert_eq!(s, l, "{q}");
        assert!(l.lines().count() > 1);
    }

    // The server answers over the S3 lake.
    let server = super::serve::Server::start_uri(&uri, dir.path(), &[], &aws_env());
    let client = server.pg().await;
    let q = "SELECT CAST(sum(orders) AS BIGINT) FROM gold.daily_region_sales";
    let local_total = ok(lakehouse_s3(&["--lake", local.to_str().unwrap(), "query", "--format", "csv", q], dir.path()));
    let served = super::serve::pg_text(&client, q).await;
    assert_eq!(served[0][0], local_total.lines().nth(1).unwrap());
    drop(server);

    // A re-run with nothing new changes no data table.
    let data_tables = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("bronze.") || l.starts_with("silver.") || l.starts_with("gold."))
            .map(String::from)
            .collect()
    };
    let before = data_tables(&ok(lakehouse_s3(&["--lake", &uri, "tables"], dir.path())));
    assert_eq!(before.len(), 7, "{before:?}");
    ok(lakehouse_s3(&["--lake", &uri, "run", "--pipeline", pipeline], dir.path()));
    let after = data_tables(&ok(lakehouse_s3(&["--lake", &uri, "tables"], dir.path())));
    assert_eq!(before, after);

    // A new landing file is ingested incrementally on S3 too.
    let extra = std::fs::read_to_string(repo().join("lake/landing/orders/orders_00001.csv")).unwrap();
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
        .put(&"retail/landing/orders/orders_late.csv".into(), shifted.into_bytes().into())
        .await
        .unwrap();
    let summary = ok(lakehouse_s3(&["--lake", &uri, "run", "--pipeline", pipeline], dir.path()));
    assert!(summary.contains("1 new files"), "{summary}");

    // A bucket that does not exist: a clear error naming the URI.
    let out = lakehouse_s3(&["--lake", "s3://no-such-bucket-here/x", "tables"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(t.contains("s3://no-such-bucket-here/x") && t.contains("NoSuchBucket"), "{t}");
    assert!(!t.contains("AWS_SECRET_ACCESS_KEY") && !t.contains("=test"), "{t}");
}

/// Four writers commit to one S3 table at the same time: Delta's
/// put-if-absent commits make each land in its own version, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_on_s3_all_land() {
    deltalake::aws::register_handlers(None);
    let bucket = bucket().await;
    let url = url::Url::parse(&format!("s3://{bucket}/t/")).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("writer", DataType::Int64, false)]));
    let batch = |w: i64| {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![w; 100]))]).unwrap()
    };
    let ops = deltalake::DeltaTable::try_from_url_with_storage_options(url.clone(), storage_options())
        .await
        .unwrap();
    ops.write(vec![batch(0)]).await.unwrap();

    let mut tasks = Vec::new();
    for w in 1..=4i64 {
        let (url, b) = (url.clone(), batch(w));
        tasks.push(tokio::spawn(async move {
            let ops = deltalake::DeltaTable::try_from_url_with_storage_options(url, storage_options())
                .await
                .unwrap();
            ops.write(vec![b]).await.map(|t| t.version())
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().expect("every concurrent commit lands").unwrap());
    }
    versions.sort();
    assert_eq!(versions, [1, 2, 3, 4]);

    let lake = lakehouse::storage::Lake::open(&format!("s3://{bucket}/"), storage_options()).unwrap();
    let table = lakehouse::delta::open(&lake.url("t"), lake.storage_options()).await.unwrap().unwrap();
    let (rows, files, _) = lakehouse::delta::row_count(&table).await.unwrap();
    assert_eq!((rows, files, table.version()), (500, 5, Some(4)));
}
