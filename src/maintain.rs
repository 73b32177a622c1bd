//! Keeping the lake fast and bounded: `lakehouse optimize` bin-packs small
//! files (or Z-orders them), `lakehouse vacuum` deletes files no version
//! within the retention needs, and a run compacts the tables it wrote once
//! their partitions gather too many small files.
//!
//! Both use delta-rs's own operations, so the commits are standard Delta
//! (OPTIMIZE with `dataChange: false`, VACUUM START/END) and optimistic
//! concurrency applies: an optimize whose files a concurrent run replaced
//! fails its commit instead of resurrecting rows, and the run's incremental
//! reads skip compaction's rewrites (`delta::changes`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::optimize::OptimizeType;
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::storage::Lake;

/// Files below this size count as small (a quarter of the target).
pub const DEFAULT_TARGET_SIZE: u64 = 128 << 20;

/// A run compacts a table's partitions holding more small files than this
/// (a model's `compact_small_files` setting overrides it; 0 turns it off).
pub const DEFAULT_COMPACT_SMALL_FILES: usize = 10;

/// The shortest `--retain` vacuum accepts: files a run has staged but not
/// yet committed, and versions a long query is reading, must survive it.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `layer.name` of a table the lake holds, with its folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub name: String,
    pub folder: String,
}

impl TableRef {
    pub fn parse(name: &str) -> Result<TableRef> {
        let (schema, table) = name.split_once('.').unwrap_or(("", name));
        let folder = crate::catalog::parse_table_name(table)
            .ok()
            .flatten()
            .filter(|(base, at)| *base == table && *at == crate::delta::At::Latest)
            .and_then(|_| crate::catalog::table_folder(schema, table))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "`{name}` is not a table name: give `layer.name`, e.g. silver.orders (`lakehouse tables` lists them)"
                ))
            })?;
        Ok(TableRef {
            name: name.to_string(),
            folder,
        })
    }
}

/// The tables named, or every table of the lake when none is.
pub async fn tables(lake: &Lake, names: &[String]) -> Result<Vec<TableRef>> {
    if !names.is_empty() {
        return names.iter().map(|n| TableRef::parse(n)).collect();
    }
    Ok(crate::catalog::list_tables(lake)
        .await?
        .into_iter()
        .map(|t| TableRef {
            name: format!("{}.{}", t.schema, t.name),
            folder: t.folder,
        })
        .collect())
}

async fn open(lake: &Lake, table: &TableRef) -> Result<DeltaTable> {
    crate::delta::open(&lake.url(&table.folder), lake.storage_options())
        .await?
        .ok_or_else(|| {
            Error::Usage(format!(
                "there is no table {}; `lakehouse tables` lists them",
                table.name
            ))
        })
}

/// One comparison of a partition column with a value (or values for `in`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFilter {
    pub column: String,
    pub op: String,
    pub values: Vec<String>,
}

/// Parses `--where`: comparisons of partition columns with quoted values,
/// joined by AND: `order_date >= '2025-03-01' AND region IN ('north', 'east')`.
pub fn parse_where(text: &str) -> Result<Vec<PartitionFilter>> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "--where `{text}`: {why}. Give comparisons of partition columns with quoted values joined by AND, \
             e.g. --where \"order_date >= '2025-03-01' AND region IN ('north', 'east')\""
        ))
    };
    let mut out = Vec::new();
    let mut rest = text.trim();
    loop {
        let column_end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let column = &rest[..column_end];
        if column.is_empty() {
            return Err(bad("expected a partition column"));
        }
        rest = rest[column_end..].trim_start();
        let lower = rest.to_ascii_lowercase();
        let op = ["not in", "in", ">=", "<=", "!=", "<>", "=", "<", ">"]
            .into_iter()
            .find(|op| {
                lower.starts_with(op)
                    && (!op.ends_with('n') || lower[op.len()..].starts_with([' ', '(']))
            })
            .ok_or_else(|| {
                bad(&format!(
                    "after `{column}` expected =, !=, <, <=, >, >=, IN or NOT IN"
                ))
            })?;
        rest = rest[op.len()..].trim_start();
        let op = if op == "<>" { "!=" } else { op };
        let mut values = Vec::new();
        if op.ends_with("in") {
            rest = rest
                .strip_prefix('(')
                .ok_or_else(|| bad("IN takes a list in parentheses"))?;
            loop {
                let (v, after) =
                    quoted(rest).ok_or_else(|| bad("values are quoted, like '2025-03-01'"))?;
                values.push(v);
                rest = after.trim_start();
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r.trim_start();
                } else if let Some(r) = rest.strip_prefix(')') {
                    rest = r.trim_start();
                    break;
                } else {
                    return Err(bad("expected , or ) in the IN list"));
                }
            }
        } else {
            let (v, after) =
                quoted(rest).ok_or_else(|| bad("values are quoted, like '2025-03-01'"))?;
            values.push(v);
            rest = after.trim_start();
        }
        out.push(PartitionFilter {
            column: column.to_string(),
            op: op.to_string(),
            values,
        });
        if rest.is_empty() {
            return Ok(out);
        }
        let lower = rest.to_ascii_lowercase();
        if lower.starts_with("and ") {
            rest = rest[4..].trim_start();
        } else {
            return Err(bad(&format!(
                "unexpected `{rest}`; only AND joins comparisons"
            )));
        }
    }
}

/// `'text'` (with `''` for a quote) at the start of `s`, and what follows.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('\'')?.char_indices().peekable();
    let mut value = String::new();
    let body = &s[1..];
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().map(|(_, c)| *c) == Some('\'') {
                value.push('\'');
                chars.next();
            } else {
                return Some((value, &body[i + 1..]));
            }
        } else {
            value.push(c);
        }
    }
    None
}

#[derive(Debug, Clone, Default)]
pub struct OptimizeOptions {
    pub filters: Vec<PartitionFilter>,
    pub zorder: Vec<String>,
    pub target_size: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Optimized {
    pub table: String,
    pub version_before: u64,
    /// The version of the OPTIMIZE commit, if there was anything to do.
    pub version: Option<u64>,
    pub files_removed: u64,
    pub files_added: u64,
    pub partitions: u64,
    pub bytes_removed: u64,
    pub bytes_added: u64,
    /// Why the table was left alone (its partitions lack a filtered column).
    pub skipped: Option<String>,
}

fn commit_properties(operation: &str, run_id: Option<&str>) -> CommitProperties {
    let mut metadata: HashMap<String, serde_json::Value> = HashMap::new();
    metadata.insert("lakehouse.operation".into(), operation.into());
    if let Some(run) = run_id {
        metadata.insert("lakehouse.runId".into(), run.into());
    }
    CommitProperties::default().with_metadata(metadata)
}

fn delta_filters(
    filters: &[PartitionFilter],
) -> Result<Vec<deltalake::kernel::schema::partitions::FilterLiteral<'_>>> {
    use deltalake::kernel::schema::partitions::{filter_literal, FilterValue};
    filters
        .iter()
        .map(|f| {
            let value = if f.op.ends_with("in") {
                FilterValue::Set(f.values.iter().map(|v| v.as_str()).collect())
            } else {
                FilterValue::Scalar(f.values[0].as_str())
            };
            filter_literal(&f.column, &f.op, value).map_err(Error::from)
        })
        .collect()
}

/// Bin-packs the table's small files (within `filters`' partitions) into
/// files of about `target_size`, or rewrites them Z-ordered by `zorder`, in
/// one commit.
pub async fn optimize(
    lake: &Lake,
    table: &TableRef,
    options: &OptimizeOptions,
    run_id: Option<&str>,
) -> Result<Optimized> {
    let delta = open(lake, table).await?;
    let before = delta.version().unwrap_or(0);
    let partition_columns = delta.snapshot()?.metadata().partition_columns().to_vec();
    let mut result = Optimized {
        table: table.name.clone(),
        version_before: before,
        ..Default::default()
    };
    if let Some(f) = options
        .filters
        .iter()
        .find(|f| !partition_columns.contains(&f.column))
    {
        result.skipped = Some(format!(
            "`{}` is not one of its partition columns ({})",
            f.column,
            if partition_columns.is_empty() {
                "it has none".to_string()
            } else {
                partition_columns.join(", ")
            }
        ));
        return Ok(result);
    }
    let filters = delta_filters(&options.filters)?;
    let target = NonZeroU64::new(options.target_size.max(1 << 20)).unwrap_or(NonZeroU64::MIN);
    let kind = if options.zorder.is_empty() {
        OptimizeType::Compact
    } else {
        OptimizeType::ZOrder(options.zorder.clone())
    };
    let (after, metrics) = delta
        .optimize()
        .with_filters(&filters)
        .with_type(kind)
        .with_target_size(target)
        .with_writer_properties(crate::delta::writer_properties())
        .with_commit_properties(commit_properties("optimize", run_id))
        .await
        .map_err(|e| Error::Table {
            table: table.name.clone(),
            message: format!(
                "optimize failed: {e}. If a run committed to the table meanwhile, run optimize again"
            ),
        })?;
    result.files_removed = metrics.num_files_removed;
    result.files_added = metrics.num_files_added;
    result.partitions = metrics.partitions_optimized;
    result.bytes_removed = metrics.files_removed.total_size.max(0) as u64;
    result.bytes_added = metrics.files_added.total_size.max(0) as u64;
    let version = after.version().unwrap_or(before);
    if version != before {
        result.version = Some(version);
        refresh_manifests(&after, &table.name).await?;
    }
    Ok(result)
}

/// Rewrites the table's symlink manifests after a commit that moved rows
/// between files, if the table keeps them.
async fn refresh_manifests(table: &DeltaTable, name: &str) -> Result<()> {
    let store = table.log_store().object_store(None);
    let prefix = object_store::path::Path::from("_symlink_format_manifest");
    let has = store
        .list(Some(&prefix))
        .next()
        .await
        .transpose()?
        .is_some();
    if has {
        crate::manifest::regenerate(table).await.map_err(|e| Error::Table {
            table: name.to_string(),
            message: format!(
                "its files were compacted, but the symlink manifests could not be rewritten: {e}. Run `lakehouse manifest {name}`"
            ),
        })?;
    }
    Ok(())
}

/// Partitions holding more than `threshold` files below a quarter of the
/// target size: the filters that select them (one `IN` per partition
/// column; a superset when there are several columns), or `None` when no
/// partition needs it. An unpartitioned table is one partition.
pub async fn fragmented(
    table: &DeltaTable,
    threshold: usize,
    target_size: u64,
) -> Result<Option<Vec<PartitionFilter>>> {
    let columns = table.snapshot()?.metadata().partition_columns().to_vec();
    let small = (target_size / 4) as i64;
    let mut counts: BTreeMap<Vec<Option<String>>, usize> = BTreeMap::new();
    let log_store = table.log_store();
    let mut files = table
        .snapshot()?
        .snapshot()
        .file_views(log_store.as_ref(), None);
    while let Some(file) = files.next().await {
        let file = file?;
        if file.size() >= small {
            continue;
        }
        let values = file.partition_values_map();
        let key: Vec<Option<String>> = columns
            .iter()
            .map(|c| values.get(c).cloned().flatten())
            .collect();
        *counts.entry(key).or_default() += 1;
    }
    let chosen: Vec<&Vec<Option<String>>> = counts
        .iter()
        .filter(|(key, n)| **n > threshold && key.iter().all(|v| v.is_some()))
        .map(|(k, _)| k)
        .collect();
    if chosen.is_empty() {
        return Ok(None);
    }
    if chosen.len() == counts.len() || columns.is_empty() {
        return Ok(Some(vec![]));
    }
    let mut filters = Vec::new();
    for (i, column) in columns.iter().enumerate() {
        let values: BTreeSet<String> = chosen.iter().filter_map(|k| k[i].clone()).collect();
        filters.push(PartitionFilter {
            column: column.clone(),
            op: "in".into(),
            values: values.into_iter().collect(),
        });
    }
    Ok(Some(filters))
}

/// After a run: compacts the partitions of `table` that hold more than
/// `threshold` small files. `Ok(None)` when none do.
pub async fn compact_if_fragmented(
    lake: &Lake,
    table: &TableRef,
    threshold: usize,
    run_id: &str,
) -> Result<Option<Optimized>> {
    if threshold == 0 {
        return Ok(None);
    }
    let Some(delta) = crate::delta::open(&lake.url(&table.folder), lake.storage_options()).await?
    else {
        return Ok(None);
    };
    let Some(filters) = fragmented(&delta, threshold, DEFAULT_TARGET_SIZE).await? else {
        return Ok(None);
    };
    if let Ok(fence) = crate::delta::FENCE.try_with(|f| f.clone()) {
        fence.check().await?;
    }
    let options = OptimizeOptions {
        filters,
        zorder: vec![],
        target_size: DEFAULT_TARGET_SIZE,
    };
    optimize(lake, table, &options, Some(run_id))
        .await
        .map(Some)
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Vacuumed {
    pub table: String,
    pub files: Vec<String>,
    pub bytes: u64,
    pub dry_run: bool,
}

/// Deletes the table's files that no version within `retain` references
/// and that are older than `retain`: files earlier commits removed, and
/// files failed or killed runs wrote but never committed. `dry_run` lists
/// them instead.
pub async fn vacuum(
    lake: &Lake,
    table: &TableRef,
    retain: Duration,
    dry_run: bool,
) -> Result<Vacuumed> {
    if retain < MIN_RETENTION {
        return Err(Error::Usage(format!(
            "--retain {}: vacuum keeps at least 1h, so that files a running run has staged and versions a running query reads survive it",
            humantime::format_duration(retain)
        )));
    }
    let delta = open(lake, table).await?;
    // Sizes, for the bytes freed, from one listing of the table's folder.
    let store = lake.store();
    let root = lake.path(&table.folder);
    let sizes: HashMap<String, u64> = store
        .list(Some(&root))
        .map_ok(|m| {
            let relative = m
                .location
                .as_ref()
                .strip_prefix(root.as_ref())
                .unwrap_or(m.location.as_ref())
                .trim_start_matches('/')
                .to_string();
            (relative, m.size)
        })
        .try_collect()
        .await?;
    let retention = chrono::Duration::from_std(retain)
        .map_err(|_| Error::Usage(format!("--retain {retain:?} is too long")))?;
    let (_, metrics) = delta
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
        .with_dry_run(dry_run)
        .with_commit_properties(commit_properties("vacuum", None))
        .await
        .map_err(|e| Error::Table {
            table: table.name.clone(),
            message: format!("vacuum failed: {e}"),
        })?;
    let mut files: Vec<String> = metrics
        .files_deleted
        .into_iter()
        .map(|f| {
            let relative = f
                .strip_prefix(root.as_ref())
                .unwrap_or(&f)
                .trim_start_matches('/')
                .to_string();
            relative
        })
        .collect();
    files.sort();
    let bytes = files.iter().filter_map(|f| sizes.get(f)).sum();
    Ok(Vacuumed {
        table: table.name.clone(),
        files,
        bytes,
        dry_run,
    })
}

/// Why `version` of a table can no longer be read, if a vacuum deleted its
/// files: a vacuum after it, whose retention ended before the commit that
/// replaced that version's files. `latest` is the table at its newest
/// version (its log holds the vacuums).
pub async fn vacuumed_away(latest: &DeltaTable, version: u64) -> Result<Option<String>> {
    let Some(current) = latest.version() else {
        return Ok(None);
    };
    if version >= current {
        return Ok(None);
    }
    let infos: Vec<deltalake::kernel::CommitInfo> = latest
        .history(Some((current - version) as usize))
        .try_collect()
        .await?;
    // infos[i] is version current - i; the commit after `version` is last.
    let Some(next) = infos.last().and_then(|i| i.timestamp) else {
        return Ok(None);
    };
    for info in &infos {
        if info.operation.as_deref() != Some("VACUUM START") {
            continue;
        }
        let Some(at) = info.timestamp else { continue };
        let params = info.operation_parameters.clone().unwrap_or_default();
        let millis = |k: &str| {
            params.get(k).and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
        };
        let Some(retention) = millis("specifiedRetentionMillis")
            .or_else(|| millis("specified_retention_millis"))
            .or_else(|| millis("defaultRetentionMillis"))
        else {
            continue;
        };
        if next < at - retention {
            let when = chrono::DateTime::from_timestamp_millis(at)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            return Ok(Some(format!(
                "version {version} can no longer be read: a vacuum at {when} kept {} of history, and this version's files were replaced before that. \
                 Versions still readable start after it; `lakehouse history` lists them",
                humantime::format_duration(std::time::Duration::from_millis(retention.max(0) as u64))
            )));
        }
    }
    Ok(None)
}

/// One version of a table, as `lakehouse history` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Version {
    pub version: i64,
    pub timestamp: Option<String>,
    pub operation: Option<String>,
    pub run_id: Option<String>,
    /// The job's own metrics (rows in, quarantined, ...) or Delta's
    /// operation metrics.
    pub metrics: Option<serde_json::Value>,
}

/// The table's last `last` versions, newest first.
pub async fn history(lake: &Lake, table: &TableRef, last: usize) -> Result<Vec<Version>> {
    let delta = open(lake, table).await?;
    let current = delta.version().unwrap_or(0) as i64;
    let infos: Vec<deltalake::kernel::CommitInfo> =
        delta.history(Some(last.max(1))).try_collect().await?;
    Ok(infos
        .into_iter()
        .enumerate()
        .map(|(i, info)| {
            let timestamp = info
                .timestamp
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            let run_id = info
                .info
                .get("lakehouse.runId")
                .or_else(|| info.info.get("lakehouse.run_id"))
                .and_then(|v| v.as_str())
                .map(String::from);
            let metrics = info
                .info
                .get("lakehouse.metrics")
                .or_else(|| info.info.get("operationMetrics"))
                .cloned();
            Version {
                version: current - i as i64,
                timestamp,
                operation: info.operation,
                run_id,
                metrics,
            }
        })
        .collect())
}

pub fn print_history(
    versions: &[Version],
    format: crate::query::Format,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("write output", e);
    match format {
        crate::query::Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string(versions).unwrap_or_default()
        )
        .map_err(io),
        _ => {
            let csv = format == crate::query::Format::Csv;
            let rows: Vec<[String; 5]> = versions
                .iter()
                .map(|v| {
                    [
                        v.version.to_string(),
                        v.timestamp.clone().unwrap_or_default(),
                        v.operation.clone().unwrap_or_default(),
                        v.run_id.clone().unwrap_or_default(),
                        v.metrics
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            let header = ["version", "timestamp", "operation", "run_id", "metrics"];
            if csv {
                let quote = |s: &str| {
                    if s.contains([',', '"', '\n']) {
                        format!("\"{}\"", s.replace('"', "\"\""))
                    } else {
                        s.to_string()
                    }
                };
                writeln!(out, "{}", header.join(",")).map_err(io)?;
                for r in &rows {
                    let cells: Vec<String> = r.iter().map(|c| quote(c)).collect();
                    writeln!(out, "{}", cells.join(",")).map_err(io)?;
                }
                return Ok(());
            }
            let mut table = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
            table.extend(rows.iter().map(|r| r.to_vec()));
            use crate::text::Align::{Left, Right};
            write!(
                out,
                "{}",
                crate::text::table(&table, &[Right, Left, Left, Left, Left], false)
            )
            .map_err(io)?;
            Ok(())
        }
    }
}

pub use crate::text::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    fn f(column: &str, op: &str, values: &[&str]) -> PartitionFilter {
        PartitionFilter {
            column: column.into(),
            op: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn where_clauses() {
        assert_eq!(
            parse_where("order_date >= '2025-03-01' AND region IN ('north', 'o''hare')").unwrap(),
            vec![
                f("order_date", ">=", &["2025-03-01"]),
                f("region", "in", &["north", "o'hare"])
            ]
        );
        assert_eq!(
            parse_where("region not in ('a') and d<>'x'").unwrap(),
            vec![f("region", "not in", &["a"]), f("d", "!=", &["x"])]
        );
        assert_eq!(
            parse_where("index = 'x'").unwrap(),
            vec![f("index", "=", &["x"])]
        );
        for bad in [
            "",
            "region",
            "region = north",
            "region = 'n' OR region = 's'",
            "region IN 'a'",
            "region IN ('a' 'b')",
            "region = 'open",
            "= 'x'",
        ] {
            let e = parse_where(bad).unwrap_err().to_string();
            assert!(e.contains("--where"), "{bad}: {e}");
        }
    }

    #[test]
    fn table_names() {
        assert_eq!(
            TableRef::parse("silver.orders").unwrap().folder,
            "silver/orders"
        );
        assert_eq!(
            TableRef::parse("system.runs").unwrap().folder,
            "_lakehouse/runs"
        );
        for bad in ["orders", "silver.orders@v3", "nope.orders", "silver."] {
            assert!(TableRef::parse(bad).is_err(), "{bad}");
        }
    }
}
