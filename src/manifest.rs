//! Delta symlink manifests: `_symlink_format_manifest/<partition>/manifest`,
//! one per partition, each listing the absolute paths of that partition's
//! live Parquet files, one per line — the layout Spark's
//! `GENERATE symlink_format_manifest` writes and Trino, Presto, Athena,
//! Redshift Spectrum, Snowflake and BigQuery external tables read.
//!
//! Why: a table folder holds every Parquet file any version ever added, so a
//! reader that globs `**/*.parquet` counts replaced rows twice. A manifest
//! names exactly the files of the latest version.
//!
//! A commit of a table that opts in (`symlink_manifest = true`) rewrites the
//! manifests of the partitions it changed and deletes those of partitions it
//! emptied; the first commit after opting in (no manifest yet) writes them
//! all. Each manifest is replaced by one PUT, so a reader sees the old or the
//! new list of a partition, never half of one.
//! Owns the manifest layout; must not know about pipelines.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};

/// Folder of the manifests, under the table's root.
pub const FOLDER: &str = "_symlink_format_manifest";

type PartitionKey = Vec<(String, Option<String>)>;

/// Hive's partition path escaping: what Trino and Athena decode from a
/// `column=value` folder name.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let needs = (c as u32) < 0x20
            || matches!(
                c,
                '"' | '#'
                    | '%'
                    | '\''
                    | '*'
                    | '/'
                    | ':'
                    | '='
                    | '?'
                    | '\\'
                    | '\x7f'
                    | '{'
                    | '['
                    | ']'
                    | '^'
            );
        if needs {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `col=value/col2=value2` in the table's partition column order.
fn partition_folder(columns: &[String], key: &PartitionKey) -> String {
    columns
        .iter()
        .map(|c| {
            let value = key
                .iter()
                .find(|(k, _)| k == c)
                .and_then(|(_, v)| v.as_deref());
            match value {
                Some(v) => format!("{c}={}", escape(v)),
                None => format!("{c}=__HIVE_DEFAULT_PARTITION__"),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn manifest_path(columns: &[String], key: &PartitionKey) -> Result<Path> {
    let folder = partition_folder(columns, key);
    let text = if folder.is_empty() {
        format!("{FOLDER}/manifest")
    } else {
        format!("{FOLDER}/{folder}/manifest")
    };
    Path::parse(&text).map_err(|e| Error::Internal(format!("manifest path `{text}`: {e}")))
}

/// Live data files of the table's loaded version by partition, as absolute URIs.
async fn live_files(table: &DeltaTable) -> Result<BTreeMap<PartitionKey, Vec<String>>> {
    let snapshot = table.snapshot()?;
    let log_store = table.log_store();
    let root = log_store
        .root_url()
        .as_str()
        .trim_end_matches('/')
        .to_string();
    let mut files = snapshot.snapshot().file_views(log_store.as_ref(), None);
    let mut out: BTreeMap<PartitionKey, Vec<String>> = BTreeMap::new();
    while let Some(file) = files.next().await {
        let file = file?;
        let key: PartitionKey = crate::upsert::partition_key(file.partition_values_map());
        let path = file.path();
        let uri = if path.contains("://") {
            path.to_string()
        } else {
            format!("{root}/{path}")
        };
        out.entry(key).or_default().push(uri);
    }
    for uris in out.values_mut() {
        uris.sort();
    }
    Ok(out)
}

/// Brings the manifests of `touched` partitions in line with the table's
/// loaded version; writes every partition's when the table has none yet.
pub async fn update(table: &DeltaTable, touched: &BTreeSet<PartitionKey>) -> Result<()> {
    let store = table.log_store().object_store(None);
    let columns = table.snapshot()?.metadata().partition_columns().to_vec();
    let live = live_files(table).await?;
    let prefix = Path::from(FOLDER);
    let first = store.list(Some(&prefix)).next().await.is_none();
    let wanted: Vec<&PartitionKey> = if first {
        live.keys().collect()
    } else {
        touched.iter().collect()
    };
    let puts = wanted.into_iter().map(|key| {
        let store = store.clone();
        let path = manifest_path(&columns, key);
        let body = live.get(key).map(|uris| {
            let mut text = uris.join("\n");
            text.push('\n');
            text
        });
        async move {
            let path = path?;
            match body {
                Some(text) => {
                    store.put(&path, Bytes::from(text).into()).await?;
                }
                None => match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::from(e)),
                },
            }
            Ok::<_, Error>(())
        }
    });
    futures::stream::iter(puts)
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Rewrites every manifest of the table from its latest version and deletes
/// those of partitions that no longer exist (`lakehouse manifest TABLE`).
pub async fn regenerate(table: &DeltaTable) -> Result<usize> {
    let store = table.log_store().object_store(None);
    let columns = table.snapshot()?.metadata().partition_columns().to_vec();
    let live = live_files(table).await?;
    let mut keep = BTreeSet::new();
    for key in live.keys() {
        keep.insert(manifest_path(&columns, key)?);
    }
    let existing: Vec<Path> = store
        .list(Some(&Path::from(FOLDER)))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    for path in existing.into_iter().filter(|p| !keep.contains(p)) {
        store.delete(&path).await?;
    }
    let touched: BTreeSet<PartitionKey> = live.keys().cloned().collect();
    // With the stale ones gone, write every partition's.
    for key in &touched {
        let path = manifest_path(&columns, key)?;
        let mut text = live[key].join("\n");
        text.push('\n');
        store.put(&path, Bytes::from(text).into()).await?;
    }
    Ok(touched.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_folders_escape_like_hive() {
        let cols = vec!["order_date".to_string(), "region".to_string()];
        let key = vec![
            ("order_date".to_string(), Some("2026-03-01".to_string())),
            ("region".to_string(), Some("a/b=c".to_string())),
        ];
        assert_eq!(
            partition_folder(&cols, &key),
            "order_date=2026-03-01/region=a%2Fb%3Dc"
        );
        let null = vec![
            ("order_date".to_string(), None),
            ("region".to_string(), Some("east".to_string())),
        ];
        assert_eq!(
            manifest_path(&cols, &null).unwrap().as_ref(),
            "_symlink_format_manifest/order_date=__HIVE_DEFAULT_PARTITION__/region=east/manifest"
        );
        assert_eq!(
            manifest_path(&[], &vec![]).unwrap().as_ref(),
            "_symlink_format_manifest/manifest"
        );
    }
}
