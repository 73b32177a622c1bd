//! Which way a model runs this time: full, incremental over new input files,
//! incremental over changed partitions, or a backfill of a date range, decided
//! from what its last commit recorded and the Delta log since. Reads logs;
//! writes nothing.

use super::*;

/// The engine's memory limit (2 GiB when it has none).
pub(super) fn memory_budget(ctx: &SessionContext) -> u64 {
    match ctx.runtime_env().memory_pool.memory_limit() {
        datafusion::execution::memory_pool::MemoryLimit::Finite(n) => n as u64,
        _ => 2 << 30,
    }
}

/// A replace_partitions run touching this share of the partitions runs in full.
const FULL_WHEN_PARTITIONS_PCT: usize = 50;

/// How a model runs this time.
#[derive(Debug, Clone)]
pub(super) enum Strategy {
    /// Read every input whole and replace the table and its quarantine.
    Full(String),
    /// Read only the files the stream inputs gained since the last run:
    /// input -> files added (empty: nothing new in that input).
    Stream(BTreeMap<String, Vec<deltalake::kernel::Add>>),
    /// Recompute only these partitions of the model (sorted `(column,
    /// value)` pairs), reading only them from inputs partitioned alike.
    Partitions(BTreeSet<Vec<(String, Option<String>)>>),
    /// Recompute the dates in the range (a backfill).
    Range(DateRange),
}

impl Strategy {
    /// `full`, `incremental` or `backfill`: how the model runs, for
    /// machines (`describe` says why, for people).
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Strategy::Full(_) => "full",
            Strategy::Stream(_) | Strategy::Partitions(_) => "incremental",
            Strategy::Range(_) => "backfill",
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Strategy::Full(why) => format!("full ({why})"),
            Strategy::Stream(files) => {
                let n: usize = files.values().map(|f| f.len()).sum();
                format!(
                    "incremental ({})",
                    crate::text::plural(n as u64, "new input file")
                )
            }
            Strategy::Partitions(p) => format!(
                "incremental ({})",
                crate::text::plural(p.len() as u64, "partition")
            ),
            Strategy::Range(r) => format!("backfill ({r})"),
        }
    }
}

/// Why a replace_partitions model is rebuilt: how many of the partitions it
/// has changed, and how many new ones arrived, as a person counts them.
fn partitions_touched(changed: usize, new: usize, total: usize) -> String {
    let mut parts = vec![format!(
        "{changed} of its {}",
        crate::text::plural(total as u64, "partition")
    )];
    parts[0].push_str(" changed");
    if new > 0 {
        parts.push(crate::text::plural(new as u64, "new partition"));
    }
    parts.join(", ")
}

/// Decides between a full and an incremental run from the inputs' versions
/// at the model's last commit and the Delta log of what changed since.
#[allow(clippy::too_many_arguments)]
pub(super) async fn decide(
    tables: &Inputs,
    model: &Model,
    existing: Option<&DeltaTable>,
    memory_budget: u64,
    last: Option<&serde_json::Map<String, Value>>,
    quarantine_last: Option<&serde_json::Map<String, Value>>,
    inputs: &BTreeMap<String, i64>,
    hash: &str,
) -> Result<Strategy> {
    let settings = &model.settings;
    let Some(last) = last else {
        return Ok(Strategy::Full("first run".into()));
    };
    if last.get("lakehouse.definition") != Some(&json!(hash)) {
        return Ok(Strategy::Full("SQL or settings changed".into()));
    }
    let Some(before) = last
        .get("lakehouse.inputs")
        .and_then(|v| serde_json::from_value::<BTreeMap<String, i64>>(v.clone()).ok())
    else {
        return Ok(Strategy::Full(
            "the last commit records no input versions".into(),
        ));
    };
    let has_quarantine = settings
        .expectations
        .iter()
        .any(|e| e.action == crate::pipeline::Action::Drop);
    let changed: Vec<(&String, i64, i64)> = inputs
        .iter()
        .filter_map(|(name, now)| {
            let then = before.get(name).copied().unwrap_or(-2);
            (then != *now).then_some((name, then, *now))
        })
        .collect();
    match settings.mode {
        WriteMode::Overwrite => Ok(Strategy::Full("inputs changed".into())),
        WriteMode::Merge | WriteMode::Append => {
            if settings.incremental_inputs.is_empty() {
                return Ok(Strategy::Full(
                    "inputs changed; no incremental_inputs".into(),
                ));
            }
            if has_quarantine
                && quarantine_last.and_then(|q| q.get("lakehouse.inputs"))
                    != last.get("lakehouse.inputs")
            {
                return Ok(Strategy::Full(
                    "the last run stopped between its quarantine and table commits".into(),
                ));
            }
            let mut files = BTreeMap::new();
            for input in &settings.incremental_inputs {
                files.insert(input.clone(), vec![]);
            }
            for (name, then, now) in changed {
                if !settings.incremental_inputs.contains(name) {
                    return Ok(Strategy::Full(format!("{name} changed")));
                }
                let Some(table) = tables.get(name).and_then(|t| t.as_ref()) else {
                    return Ok(Strategy::Full(format!("{name} is gone")));
                };
                // Up to the table's latest version, not only `now`: a
                // compaction after `now` may have rewritten the new files.
                let latest = table.version().map_or(now, |v| v as i64);
                match delta::changes(table, then, latest.max(now)).await? {
                    Some(c) if c.added_then_compacted => {
                        return Ok(Strategy::Full(format!(
                            "{name}'s new files were compacted before this run read them"
                        )))
                    }
                    Some(c) if c.removed == 0 && then >= 0 => {
                        files.insert(name.clone(), c.added);
                    }
                    _ => {
                        return Ok(Strategy::Full(format!(
                            "{name} had rows replaced or its schema changed"
                        )))
                    }
                }
            }
            // An incremental merge holds the new rows in memory (the upsert's
            // join builds on them); a batch too large for that is rebuilt in
            // full, which streams and spills. Parquet grows about 4x in
            // memory. (An append streams: it has no such limit.)
            let new_bytes: u64 = files.values().flatten().map(|a| a.size.max(0) as u64).sum();
            if settings.mode == WriteMode::Merge && new_bytes.saturating_mul(4) > memory_budget / 2
            {
                return Ok(Strategy::Full(format!(
                    "{} MB of new input is too much to hold in memory (--memory-limit {} MB)",
                    new_bytes >> 20,
                    memory_budget >> 20
                )));
            }
            Ok(Strategy::Stream(files))
        }
        WriteMode::ReplacePartitions => {
            if has_quarantine {
                return Ok(Strategy::Full(
                    "inputs changed; drop rules need a full run".into(),
                ));
            }
            let mut touched = BTreeSet::new();
            for (name, then, now) in changed {
                let Some(table) = tables.get(name).and_then(|t| t.as_ref()) else {
                    return Ok(Strategy::Full(format!("{name} is gone")));
                };
                let parts = table.snapshot()?.metadata().partition_columns().to_vec();
                if then < 0 || !settings.partition_by.iter().all(|c| parts.contains(c)) {
                    return Ok(Strategy::Full(format!(
                        "{name} changed and is not partitioned by {}",
                        settings.partition_by.join(", ")
                    )));
                }
                match delta::changes(table, then, now).await? {
                    Some(c) if !c.partitions_unknown => {
                        for key in c.partitions {
                            let mut k: Vec<(String, Option<String>)> = key
                                .into_iter()
                                .filter(|(c, _)| settings.partition_by.contains(c))
                                .collect();
                            k.sort();
                            touched.insert(k);
                        }
                    }
                    _ => {
                        return Ok(Strategy::Full(format!(
                            "what changed in {name} is not in its log"
                        )))
                    }
                }
            }
            // Filtering every scan to most partitions costs more than reading
            // them all (the predicate is evaluated per row): rebuild instead.
            if let Some(table) = existing {
                let columns = table.snapshot()?.metadata().partition_columns().to_vec();
                let present: BTreeSet<Vec<(String, Option<String>)>> =
                    delta::partition_stats(table)
                        .await?
                        .into_iter()
                        .map(|(values, ..)| {
                            let mut k: Vec<(String, Option<String>)> =
                                columns.iter().cloned().zip(values).collect();
                            k.sort();
                            k
                        })
                        .collect();
                let total = present.len();
                if touched.len() > 1 && touched.len() * 100 >= total * FULL_WHEN_PARTITIONS_PCT {
                    let changed = touched.intersection(&present).count();
                    return Ok(Strategy::Full(partitions_touched(
                        changed,
                        touched.len() - changed,
                        total,
                    )));
                }
            }
            Ok(Strategy::Partitions(touched))
        }
    }
}

#[cfg(test)]
mod decide_tests {
    //! Every branch of [`decide`], over real Delta tables in a temp folder.

    use std::collections::HashMap;

    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    use super::*;
    use crate::pipeline::{Action, Expectation, ModelSettings};

    fn model(mode: WriteMode, incremental: &[&str], drop_rule: bool) -> Model {
        Model {
            layer: "silver".into(),
            name: "m".into(),
            sql_file: "silver/m.sql".into(),
            sql: "SELECT * FROM bronze.a".into(),
            settings: ModelSettings {
                mode,
                partition_by: vec!["day".into()],
                unique_key: vec!["v".into()],
                incremental_inputs: incremental.iter().map(|s| s.to_string()).collect(),
                expectations: if drop_rule {
                    vec![Expectation {
                        name: "r".into(),
                        check: "v > 0".into(),
                        action: Action::Drop,
                        line: 1,
                    }]
                } else {
                    vec![]
                },
                ..Default::default()
            },
            inputs: vec!["bronze.a".into(), "bronze.b".into()],
        }
    }

    /// A table partitioned by `day` (or not), after one write per batch;
    /// `replace` makes the last write replace the partitions it writes.
    async fn table(
        dir: &std::path::Path,
        name: &str,
        partitioned: bool,
        batches: &[&[(&str, i64)]],
        replace_last: bool,
    ) -> DeltaTable {
        let url = url::Url::from_directory_path(dir.join(name)).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let mut spec = WriteSpec {
            table_name: name.into(),
            partition_by: if partitioned {
                vec!["day".into()]
            } else {
                vec![]
            },
            replace: Replace::Nothing,
            transactions: vec![],
            metadata: HashMap::new(),
            description: None,
            symlink_manifest: false,
            upsert: None,
        };
        let mut t = delta::ensure_table(&url, &HashMap::new(), &schema, &spec)
            .await
            .unwrap();
        for (i, rows) in batches.iter().enumerate() {
            if replace_last && i + 1 == batches.len() {
                spec.replace = Replace::Partitions(Default::default());
            }
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(
                        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                    )),
                ],
            )
            .unwrap();
            let stream = Box::pin(RecordBatchStreamAdapter::new(
                schema.clone(),
                futures::stream::iter(vec![Ok(batch)]),
            ));
            t = delta::write(t, vec![stream], &spec).await.unwrap().0;
        }
        t
    }

    fn info(inputs: &[(&str, i64)], hash: &str) -> serde_json::Map<String, Value> {
        let inputs: BTreeMap<String, i64> =
            inputs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut m = serde_json::Map::new();
        m.insert("lakehouse.inputs".into(), json!(inputs));
        m.insert("lakehouse.definition".into(), json!(hash));
        m
    }

    /// What `decide` answers, as a short text: `full: why`, `stream: N
    /// files`, `partitions: [day=..]`.
    #[allow(clippy::too_many_arguments)]
    async fn decided(
        tables: &Inputs,
        model: &Model,
        existing: Option<&DeltaTable>,
        budget: u64,
        last: Option<serde_json::Map<String, Value>>,
        quarantine_last: Option<serde_json::Map<String, Value>>,
        now: &[(&str, i64)],
    ) -> String {
        let now: BTreeMap<String, i64> = now.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let s = decide(
            tables,
            model,
            existing,
            budget,
            last.as_ref(),
            quarantine_last.as_ref(),
            &now,
            "h",
        )
        .await
        .unwrap();
        match s {
            Strategy::Full(why) => format!("full: {why}"),
            Strategy::Stream(files) => format!(
                "stream: {}",
                files
                    .iter()
                    .map(|(k, v)| format!("{k}+{}", v.len()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Strategy::Partitions(p) => format!(
                "partitions: {}",
                p.iter()
                    .map(|k| k
                        .iter()
                        .map(|(c, v)| format!("{c}={}", v.clone().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(","))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Strategy::Range(r) => format!("range: {r}"),
        }
    }

    #[tokio::test]
    async fn every_branch_of_the_decision() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // bronze.a: v0 created, v1 and v2 append (one file each).
        let a = table(d, "a", false, &[&[("d1", 1)], &[("d2", 2)]], false).await;
        // bronze.b, partitioned: v1 writes d1 and d2, v2 replaces d2.
        let b = table(d, "b", true, &[&[("d1", 1), ("d2", 2)], &[("d2", 3)]], true).await;
        // The model's own table, partitioned by day: d1..d4.
        let own = table(
            d,
            "own",
            true,
            &[&[("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4)]],
            false,
        )
        .await;
        let tables: Inputs = BTreeMap::from([
            ("bronze.a".to_string(), Some(a)),
            ("bronze.b".to_string(), Some(b)),
        ]);
        let gone: Inputs = BTreeMap::from([
            ("bronze.a".to_string(), None),
            ("bronze.b".to_string(), None),
        ]);
        let merge = model(WriteMode::Merge, &["bronze.a"], false);
        let merge_b = model(WriteMode::Merge, &["bronze.a", "bronze.b"], false);
        let plain_merge = model(WriteMode::Merge, &[], false);
        let merge_drop = model(WriteMode::Merge, &["bronze.a"], true);
        let overwrite = model(WriteMode::Overwrite, &[], false);
        let replace = model(WriteMode::ReplacePartitions, &[], false);
        let replace_drop = model(WriteMode::ReplacePartitions, &[], true);
        let big = 2u64 << 30;
        let now = [("bronze.a", 2), ("bronze.b", 2)];
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "no last commit",
                decided(&tables, &merge, None, big, None, None, &now).await,
                "full: first run",
            ),
            (
                "definition changed",
                decided(
                    &tables,
                    &merge,
                    None,
                    big,
                    Some(info(&now, "other")),
                    None,
                    &now,
                )
                .await,
                "full: SQL or settings changed",
            ),
            (
                "no inputs recorded",
                decided(
                    &tables,
                    &merge,
                    None,
                    big,
                    Some({
                        let mut m = info(&now, "h");
                        m.remove("lakehouse.inputs");
                        m
                    }),
                    None,
                    &now,
                )
                .await,
                "full: the last commit records no input versions",
            ),
            (
                "overwrite",
                decided(
                    &tables,
                    &overwrite,
                    None,
                    big,
                    Some(info(&[("bronze.a", 1), ("bronze.b", 2)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: inputs changed",
            ),
            (
                "merge without incremental inputs",
                decided(
                    &tables,
                    &plain_merge,
                    None,
                    big,
                    Some(info(&[("bronze.a", 1), ("bronze.b", 2)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: inputs changed; no incremental_inputs",
            ),
            (
                "quarantine behind the table",
                decided(
                    &tables,
                    &merge_drop,
                    None,
                    big,
                    Some(info(&[("bronze.a", 1), ("bronze.b", 2)], "h")),
                    Some(info(&[("bronze.a", 0), ("bronze.b", 2)], "h")),
                    &now,
                )
                .await,
                "full: the last run stopped between its quarantine and table commits",
            ),
            (
                "quarantine in step",
                decided(
                    &tables,
                    &merge_drop,
                    None,
                    big,
                    Some(info(&[("bronze.a", 1), ("bronze.b", 2)], "h")),
                    Some(info(&[("bronze.a", 1), ("bronze.b", 2)], "h")),
                    &now,
                )
                .await,
                "stream: bronze.a+1",
            ),
            (
                "a whole input changed",
                decided(
                    &tables,
                    &merge,
                    None,
                    big,
                    Some(info(&[("bronze.a", 1), ("bronze.b", 1)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: bronze.b changed",
            ),
            (
                "an input is gone",
                decided(
                    &gone,
                    &merge,
                    None,
                    big,
                    Some(info(&[("bronze.a", 1), ("bronze.b", 2)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: bronze.a is gone",
            ),
            (
                "new files of a stream input",
                decided(
                    &tables,
                    &merge,
                    None,
                    big,
                    Some(info(&[("bronze.a", 0), ("bronze.b", 2)], "h")),
                    None,
                    &now,
                )
                .await,
                "stream: bronze.a+2",
            ),
            (
                "nothing new",
                decided(
                    &tables,
                    &merge,
                    None,
                    big,
                    Some(info(&now, "h")),
                    None,
                    &now,
                )
                .await,
                "stream: bronze.a+0",
            ),
            (
                "rows replaced in a stream input",
                decided(
                    &tables,
                    &merge_b,
                    None,
                    big,
                    Some(info(&[("bronze.a", 2), ("bronze.b", 1)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: bronze.b had rows replaced or its schema changed",
            ),
            (
                "too much to hold in memory",
                decided(
                    &tables,
                    &merge,
                    None,
                    1024,
                    Some(info(&[("bronze.a", 0), ("bronze.b", 2)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: 0 MB of new input is too much to hold in memory (--memory-limit 0 MB)",
            ),
            (
                "replace_partitions with drop rules",
                decided(
                    &tables,
                    &replace_drop,
                    None,
                    big,
                    Some(info(&[("bronze.a", 2), ("bronze.b", 1)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: inputs changed; drop rules need a full run",
            ),
            (
                "replace_partitions, input not partitioned",
                decided(
                    &tables,
                    &replace,
                    None,
                    big,
                    Some(info(&[("bronze.a", 1), ("bronze.b", 2)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: bronze.a changed and is not partitioned by day",
            ),
            (
                "replace_partitions, an input gone",
                decided(
                    &gone,
                    &replace,
                    None,
                    big,
                    Some(info(&[("bronze.a", 1), ("bronze.b", 2)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: bronze.a is gone",
            ),
            (
                "replace_partitions, one partition",
                decided(
                    &tables,
                    &replace,
                    Some(&own),
                    big,
                    Some(info(&[("bronze.a", 2), ("bronze.b", 1)], "h")),
                    None,
                    &now,
                )
                .await,
                "partitions: day=d2",
            ),
            (
                "replace_partitions, most partitions",
                decided(
                    &tables,
                    &replace,
                    Some(&own),
                    big,
                    Some(info(&[("bronze.a", 2), ("bronze.b", 0)], "h")),
                    None,
                    &now,
                )
                .await,
                "full: 2 of its 4 partitions changed",
            ),
        ];
        let mut wrong = vec![];
        for (name, got, want) in &cases {
            if got != want {
                wrong.push(format!("{name}: got `{got}`, want `{want}`"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::partitions_touched;

    #[test]
    fn rebuilt_partitions_are_counted_as_changed_and_new() {
        assert_eq!(
            partitions_touched(112, 9, 112),
            "112 of its 112 partitions changed, 9 new partitions"
        );
        assert_eq!(
            partitions_touched(1, 1, 1),
            "1 of its 1 partition changed, 1 new partition"
        );
        assert_eq!(
            partitions_touched(60, 0, 100),
            "60 of its 100 partitions changed"
        );
    }
}
