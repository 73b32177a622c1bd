//! The upsert of new rows into an existing `merge` model, as plans like
//! every other model run (plan → stage → commit), so it runs wherever the
//! session runs plans, a cluster's executors included:
//!
//! 1. **stage the offer**: the model's plan over the new input files is
//!    checked, deduplicated and written by the staging plan, into a scratch
//!    folder instead of the table, one file per task rather than per
//!    partition as it is only read back (quarantined rows into the
//!    quarantine's folder, as always);
//! 2. **decide**: the offered rows joined with the table's keys give a few
//!    rows of counts per partition ([`crate::upsert::decide`]);
//! 3. **stage the rewrite**: the winners and the surviving rows of the
//!    partitions to rewrite are written into the table's folder;
//! 4. **commit**: the quarantine, then the table (its rewritten partitions'
//!    files removed, the new ones added), in one commit each.
//!
//! Nothing is committed until every plan has run; the scratch folder is
//! removed at the end either way (and, after a crash, by the model's next
//! upsert).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::prelude::{DataFrame, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use serde_json::json;

use super::stage::{Stage, Staging};
use crate::cluster::scan::SnapshotTable;
use crate::delta::{self, Replace, Staged, WriteSpec};
use crate::error::{Error, Result};
use crate::pipeline::ModelSettings;
use crate::storage::Lake;
use crate::upsert::{Columns, OfferedKeys, PartitionKey, MAX_FILES_PER_PARTITION};

/// At most this many distinct offered keys are held on the driver to skip
/// stored files by their key range; a larger offer reads every file.
const KEYS_HELD_FOR_SKIPPING: usize = 2_000_000;

/// An offer of at most this many rows is held whole as the rewrite's anti
/// join's build side, so the stored rows keep their partition order (see
/// step 3 of [`stage_and_commit`]); a larger one is split by key and the
/// rows are sorted before the writers.
const OFFER_HELD_FOR_ORDER: u64 = 2_000_000;

/// `ctx` with joins that collect their build side whole (never split both
/// sides by key) and hash splits that keep an existing order rather than
/// sort again: how the rewrite of a small offer is planned.
fn in_order_session(ctx: &SessionContext) -> SessionContext {
    let state = ctx.state();
    let mut config = state.config().clone();
    config.options_mut().optimizer.prefer_existing_sort = true;
    config.options_mut().optimizer.repartition_joins = false;
    SessionContext::new_with_state(
        datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .build(),
    )
}

/// What the upsert did.
pub(super) struct Merged {
    pub version: Option<i64>,
    /// Rows the model offered (after checks and deduplication).
    pub offered: Staging,
    pub decision: crate::upsert::Decision,
    pub rewritten: usize,
    pub files: usize,
    /// Partitions that got new files.
    pub partitions: usize,
    /// The Delta log's counts agree with the staged ones (see [`upsert`]).
    pub log_agrees: bool,
}

/// The folder under the lake root where a model's upserts stage the rows
/// they offer (`silver.orders`: `_lakehouse_scratch/silver/orders`):
/// outside every schema's folder, so no listing sees it.
fn scratch_folder(model: &str) -> String {
    format!("_lakehouse_scratch/{}", model.replace('.', "/"))
}

/// Upserts the rows of `df` (the model over its new input files) into
/// `stage.table`, committing the quarantine and then the table.
pub(super) async fn upsert(
    ctx: &SessionContext,
    lake: &Lake,
    stage: Stage<'_>,
    df: DataFrame,
    settings: &ModelSettings,
    settings_file: &std::path::Path,
    spec: &mut WriteSpec,
) -> Result<Merged> {
    let scratch = scratch_folder(stage.model);
    // What a run that crashed mid-upsert left.
    remove_folder(lake, &scratch).await?;
    let here = format!("{scratch}/{}", stage.run_id);
    let merged = stage_and_commit(ctx, lake, &here, stage, df, settings, settings_file, spec).await;
    // The scratch files are never referenced: removing them is tidiness,
    // and a failure to do so must not hide the upsert's own outcome.
    if let Err(e) = remove_folder(lake, &scratch).await {
        tracing::warn!(folder = %here, error = %e, "could not remove an upsert's scratch files; the next upsert of this model removes them");
    }
    merged
}

#[allow(clippy::too_many_arguments)]
async fn stage_and_commit(
    ctx: &SessionContext,
    lake: &Lake,
    scratch: &str,
    mut stage: Stage<'_>,
    df: DataFrame,
    settings: &ModelSettings,
    settings_file: &std::path::Path,
    spec: &mut WriteSpec,
) -> Result<Merged> {
    let scratch_url = lake.url(scratch);
    // 1. The offer: checked, deduplicated, staged in the scratch folder.
    stage.write_to = Some(scratch_url.clone());
    let offered = stage.stage(ctx, df, settings, settings_file).await?;
    stage.write_to = None;

    let stored: Vec<String> = settings
        .sequence_by
        .iter()
        .take_while(|c| !c.starts_with('_'))
        .cloned()
        .collect();
    let columns = Columns {
        keys: &settings.unique_key,
        partition_by: &settings.partition_by,
        sequence: &stored,
    };
    let schema = delta::table_arrow_schema(&stage.table)?;
    let table = SnapshotTable::resolve_with_stats(&stage.table).await?;
    let scan = |t: SnapshotTable| -> Result<DataFrame> { Ok(ctx.read_table(Arc::new(t))?) };
    let offer = || -> Result<DataFrame> {
        scan(SnapshotTable::of_files(
            &scratch_url,
            &offered.adds,
            &schema,
            &[],
        )?)
    };

    // 2. What the offer does, per partition. An empty offer does nothing
    // (and runs no plan over nothing: Ballista's adaptive planning turns an
    // empty stage into an empty node that a writer's plan cannot be made
    // from). Only the stored files whose key range holds an offered key
    // can hold a stored row of one (data skipping on the log's statistics;
    // files without them stay).
    let candidates = match offered.written {
        0 => table.only(|_| false),
        _ => {
            let keys = OfferedKeys::collect(offer()?, &columns, KEYS_HELD_FOR_SKIPPING).await?;
            let first_key = settings.unique_key.first();
            table.only(|f| match (&keys, first_key.and_then(|k| f.range(k))) {
                (Some(keys), Some((min, max))) => keys.may_lie_in(&min, &max),
                _ => true,
            })
        }
    };
    tracing::debug!(
        files = candidates.recipe().files.len(),
        of = table.recipe().files.len(),
        "upsert: stored files whose key range holds an offered key"
    );
    let decision = match offered.written {
        0 => Default::default(),
        _ => {
            // No candidate: no stored row can share a key with the offer.
            let stored = match candidates.recipe().files.is_empty() {
                true => None,
                false => Some(scan(candidates.only(|_| true))?),
            };
            crate::upsert::decide(offer()?, stored, &columns).await?
        }
    };

    // Which files lie in which partition, to pick the rewrites.
    let mut files_in: BTreeMap<PartitionKey, (usize, u64)> = BTreeMap::new();
    let mut rows_counted = true;
    for f in &table.recipe().files {
        let (files, rows) = files_in.entry(table.partition_key(f)).or_default();
        *files += 1;
        match f.rows {
            Some(n) => *rows += n,
            None => rows_counted = false,
        }
    }
    let rows_before: u64 = files_in.values().map(|(_, rows)| rows).sum();
    let mut rewrite = decision.replaced.clone();
    for key in &decision.landing {
        if files_in
            .get(key)
            .is_some_and(|(n, _)| *n >= MAX_FILES_PER_PARTITION)
        {
            rewrite.insert(key.clone());
        }
    }
    // Only a stale offered row loses; its stored row lies in a candidate
    // file of a partition named in `stale_in`, and offered rows found
    // nowhere there win. With no stale row, every offered row wins.
    let holding = candidates.only(|f| decision.stale_in.contains(&table.partition_key(f)));
    let rewritten_rows: u64 = rewrite
        .iter()
        .filter_map(|p| files_in.get(p))
        .map(|(_, rows)| rows)
        .sum();

    // 3. The winners and the rewritten partitions' surviving rows.
    let quarantine = stage.quarantine.take();
    let written = if offered.written == 0 {
        Staging::default()
    } else {
        // With no stale row and an offer small enough to hold whole, the
        // rewrite keeps partition order from the stored files to the
        // writers: the stored rows are read whole partitions per task, in
        // partition order, and stream through an anti join whose build side
        // is the offer (collected, not split by key); the winners are
        // sorted alone. The split to the writers then merges instead of a
        // sort of every rewritten row (which spills at scale).
        let in_order = holding.recipe().files.is_empty()
            && !settings.partition_by.is_empty()
            && offered.written <= OFFER_HELD_FOR_ORDER;
        let in_partitions = |set: &dyn Fn(&PartitionKey) -> bool| -> Result<Option<DataFrame>> {
            let only = table.only(|f| set(&table.partition_key(f)));
            let only = match in_order {
                true => only.clustered(),
                false => only,
            };
            match only.recipe().files.is_empty() {
                true => Ok(None),
                false => Ok(Some(scan(only)?)),
            }
        };
        let holding = match holding.recipe().files.is_empty() {
            true => None,
            false => Some(scan(holding)?),
        };
        let rows = crate::upsert::rows(
            offer()?,
            holding,
            in_partitions(&|p| rewrite.contains(p))?,
            &columns,
            in_order,
        )?;
        tracing::debug!(
            in_order,
            partitions = rewrite.len(),
            "upsert: the rewrite keeps partition order"
        );
        let ctx = match in_order {
            true => in_order_session(ctx),
            false => ctx.clone(),
        };
        // Checked and deduplicated already: the writers only write.
        let plain = ModelSettings {
            expectations: vec![],
            unique_key: vec![],
            sequence_by: vec![],
            ..settings.clone()
        };
        stage.stage(&ctx, rows, &plain, settings_file).await?
    };

    // 4. The commits: the quarantine first (a crash before the table's
    // commit leaves their recorded inputs apart, and the next run is full).
    let counts = &offered.counts;
    let quarantine_agrees = match quarantine {
        Some((q, q_spec)) => {
            let staged = Staged::from_adds(offered.quarantine_adds.clone(), counts.quarantined);
            delta::commit(q, staged, q_spec).await?.1.rows_in_files == counts.quarantined
        }
        None => counts.quarantined == 0,
    };
    spec.replace = Replace::PartitionsOnly(rewrite.clone());
    spec.upsert = Some(delta::UpsertKeys {
        keys: settings.unique_key.clone(),
        sequence: stored.clone(),
    });
    spec.metadata.insert(
        "lakehouse.metrics".into(),
        json!({
            "rowsIn": counts.rows_in,
            "rowsQuarantined": counts.quarantined,
            "duplicatesCollapsed": offered.duplicates,
            "rowsOffered": offered.written,
            "rowsInserted": decision.inserted,
            "rowsUpdated": decision.updated,
            "rowsStale": decision.stale,
            "partitionsRewritten": rewrite.len(),
            "rules": counts.results(&settings.expectations),
        }),
    );
    let (table_after, done) = delta::commit(
        stage.table,
        Staged::from_adds(written.adds, written.written),
        spec,
    )
    .await?;
    let (rows_after, _, _) = delta::row_count(&table_after).await?;
    // Three identities, each side counted apart: the offer splits into
    // inserted, updated and stale rows; the writers wrote every winner and
    // every row of the rewritten partitions but the replaced ones (all of
    // which lie there); and the table gained exactly the new keys.
    let offer_splits = decision.inserted + decision.updated + decision.stale == offered.written;
    // (winners, inserted + updated, plus the rewritten rows less the
    // updated ones: inserted + rewritten rows.)
    let rewrite_agrees = !rows_counted || written.written == decision.inserted + rewritten_rows;
    let log_agrees = quarantine_agrees
        && offer_splits
        && rewrite_agrees
        && done.rows_in_files == written.written
        && (!rows_counted || rows_after == rows_before + decision.inserted);
    if !log_agrees {
        tracing::error!(
            offered = offered.written,
            inserted = decision.inserted,
            updated = decision.updated,
            stale = decision.stale,
            written = written.written,
            rewritten_rows,
            rows_before,
            rows_after,
            "the upsert's counts do not agree"
        );
    }
    Ok(Merged {
        version: done.version,
        offered,
        decision,
        rewritten: rewrite.len(),
        files: done.files_added,
        partitions: done.partitions,
        log_agrees,
    })
}

/// Removes every file under `relative` (a folder of the lake).
async fn remove_folder(lake: &Lake, relative: &str) -> Result<()> {
    let store = lake.store();
    let prefix = lake.path(relative);
    let found = store.list(Some(&prefix)).map_ok(|m| m.location).boxed();
    store
        .delete_stream(found)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| Error::Lake {
            uri: lake.url(relative).to_string(),
            message: format!("could not remove the upsert's scratch files: {e}"),
        })?;
    Ok(())
}
