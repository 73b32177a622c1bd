//! `lakehouse run`: ingest every source, run every model in dependency order,
//! record the run in the system tables and print a one-screen summary.
//! A failing source or model is reported and turned into a failed run at the
//! end; models downstream of a failed model are not run.

use std::collections::HashSet;
use std::time::Instant;

use tracing::Instrument;

use crate::error::Result;
use crate::ingest::{self, SourceReport};
use crate::model::{self, ModelReport};
use crate::pipeline::Pipeline;
use crate::session::{self, SessionOptions};
use crate::storage::Lake;

pub use crate::progress::{Observer, Quiet};
pub use crate::runlog::{ModelStep, RunReport, SourceStep};

/// A run id: sortable by time, unique.
pub fn new_run_id() -> String {
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Which models a run runs, and how.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `layer.name` runs that model; `layer.name+` also everything downstream
    /// of it. Empty: every model. Sources are always ingested.
    pub select: Vec<String>,
    /// How much of the selected models to recompute: what changed (the
    /// default), everything (`--full-refresh`) or a date range (`--from`/`--to`).
    pub refresh: model::Refresh,
    /// Landed files to ingest again, replacing their earlier rows.
    pub reingest: Vec<String>,
}

/// The models `select` names, with everything downstream for `name+`.
pub fn selected(pipeline: &Pipeline, select: &[String]) -> Result<HashSet<String>> {
    let all: Vec<String> = pipeline.models.iter().map(|m| m.table()).collect();
    if select.is_empty() {
        return Ok(all.into_iter().collect());
    }
    let mut chosen = HashSet::new();
    for s in select {
        let (name, downstream) = match s.strip_suffix('+') {
            Some(n) => (n, true),
            None => (s.as_str(), false),
        };
        if !all.iter().any(|m| m == name) {
            return Err(crate::error::Error::Usage(format!(
                "--select {s}: no model `{name}`. Models: {}",
                all.join(", ")
            )));
        }
        let mut picked = vec![name.to_string()];
        if downstream {
            // Models come in dependency order, so one pass finds every
            // model that reads a picked one, directly or not.
            for m in &pipeline.models {
                if m.inputs.iter().any(|i| picked.contains(i)) {
                    picked.push(m.table());
                }
            }
        }
        chosen.extend(picked);
    }
    Ok(chosen)
}

pub async fn run(
    lake: &Lake,
    pipeline: &Pipeline,
    options: &SessionOptions,
    run_id: &str,
    run_options: &RunOptions,
    observer: &dyn Observer,
) -> Result<RunReport> {
    let chosen = selected(pipeline, &run_options.select)?;
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let span = tracing::info_span!("run", run_id = %run_id);
    let _guard = span.enter();
    let run = RunContext {
        lake,
        pipeline,
        options,
        run_id,
        started_at,
        run_options,
        observer,
    };

    let planned = preflight(&run).await?;
    // The session every plan of the run runs in: the preflight's, or one
    // on the cluster.
    let session = match planned {
        Some(session) => Ok(session),
        None => session::build(lake, options).await,
    };
    let ingested = ingest_sources(&run, &session).await;
    let unread = unread_landing_files(lake, pipeline).await;
    for file in &unread {
        tracing::warn!(file = %file, "landed file matches no source's `files` glob: it is not read");
    }
    let modelled = run_models(&run, &chosen, session).await;

    let mut report = RunReport {
        run_id: run_id.to_string(),
        started_at,
        sources: ingested.steps,
        unread,
        models: modelled.steps,
        errors: ingested.errors.into_iter().chain(modelled.errors).collect(),
        seconds: started.elapsed().as_secs_f64(),
        maintenance: vec![],
    };
    if report.changed_nothing() {
        // Nothing new landed and every model was up to date: no data table
        // changes; the run is still recorded, as `unchanged`.
        tracing::info!("nothing new: no table changed");
    }
    if let Err(e) = crate::runlog::record(lake, &report).await {
        tracing::warn!(error = %e, "could not record the run in the system tables");
    }
    report.maintenance = compact_written(lake, pipeline, &report).await;
    Ok(report)
}

/// What every phase of a run reads.
struct RunContext<'a> {
    lake: &'a Lake,
    pipeline: &'a Pipeline,
    options: &'a SessionOptions,
    run_id: &'a str,
    started_at: chrono::DateTime<chrono::Utc>,
    run_options: &'a RunOptions,
    observer: &'a dyn Observer,
}

/// What a phase did: its steps, and the errors that make the run fail.
struct Phase<T> {
    steps: Vec<T>,
    errors: Vec<String>,
}

/// A session over the lake, and its catalog.
type Session = (
    datafusion::prelude::SessionContext,
    std::sync::Arc<crate::catalog::LakeCatalog>,
);

/// Every model planned against its inputs' schemas before anything is
/// taken: a misnamed column in the settings stops the run here (exit 2).
/// Returns the local session it planned in, for the run's plans to run in
/// when the run is not on a cluster.
async fn preflight(run: &RunContext<'_>) -> Result<Option<Session>> {
    let local = SessionOptions {
        cluster: None,
        ..run.options.clone()
    };
    let (ctx, catalog) = session::build(run.lake, &local).await?;
    model::preflight::check(&ctx, run.pipeline).await?;
    Ok(run.options.cluster.is_none().then_some((ctx, catalog)))
}

/// Ingests every source; a source that fails is a failed step, and the
/// others still run. Names given to `--reingest` that no source found are
/// errors too.
async fn ingest_sources(run: &RunContext<'_>, session: &Result<Session>) -> Phase<SourceStep> {
    let (lake, pipeline, run_id, started_at, run_options, observer) = (
        run.lake,
        run.pipeline,
        run.run_id,
        run.started_at,
        run.run_options,
        run.observer,
    );
    let mut steps: Vec<SourceStep> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for source in &pipeline.sources {
        let t = Instant::now();
        let progress = observer.source_started(&source.name, &source.csv.files);
        let outcome = match session {
            Ok((ctx, _)) => {
                ingest::ingest_source(
                    ctx,
                    lake,
                    source,
                    run_id,
                    started_at,
                    progress.clone(),
                    &run_options.reingest,
                    run.options.target_partitions,
                )
                .await
            }
            Err(e) => Err(crate::error::Error::Ingest {
                source_name: source.name.clone(),
                message: format!("could not start: {e}"),
            }),
        };
        progress.finish();
        let seconds = t.elapsed().as_secs_f64();
        match outcome {
            Ok(r) => {
                if !r.reconciled {
                    errors.push(format!(
                        "bronze.{}: reconciliation failed: {} lines read, {} rows + {} rejected, or the Delta log disagrees. This is a bug: please report it",
                        source.name, r.lines, r.rows, r.rejected
                    ));
                }
                let refused: Vec<String> = r
                    .files
                    .iter()
                    .filter_map(|f| {
                        f.refused.as_ref().map(|m| {
                            format!("bronze.{}: file {} refused: {m}", source.name, f.file)
                        })
                    })
                    .collect();
                errors.extend(refused.iter().cloned());
                tracing::info!(source = %source.name, rows = r.rows, rejected = r.rejected, files = r.files.len(), skipped = r.files_skipped, "ingested");
                steps.push(SourceStep {
                    name: source.name.clone(),
                    status: if refused.is_empty() {
                        "succeeded".into()
                    } else {
                        "partial".into()
                    },
                    message: if refused.is_empty() {
                        None
                    } else {
                        Some(refused.join("; "))
                    },
                    report: r,
                    seconds,
                });
            }
            Err(e) => {
                tracing::error!(source = %source.name, error = %e, "ingest failed");
                errors.push(e.to_string());
                steps.push(SourceStep {
                    name: source.name.clone(),
                    status: "failed".into(),
                    message: Some(e.to_string()),
                    report: SourceReport::default(),
                    seconds,
                });
            }
        }
    }

    let sources = &steps;
    for name in &run_options.reingest {
        if !sources.iter().any(|s| s.report.reingested.contains(name)) {
            errors.push(format!(
                "--reingest {name}: no source found a landed file by that name. Give the name bronze records in _source_file, relative to the lake (like landing/orders/orders_00001.csv)"
            ));
        }
    }

    Phase { steps, errors }
}

/// Runs the chosen models in dependency order; a model downstream of a
/// failed one is not run. From here on files may have been taken: a failure
/// is recorded with the run and exits 1, not 2.
async fn run_models(
    run: &RunContext<'_>,
    chosen: &HashSet<String>,
    session: Result<Session>,
) -> Phase<ModelStep> {
    let (lake, pipeline, run_id, started_at, run_options, observer) = (
        run.lake,
        run.pipeline,
        run.run_id,
        run.started_at,
        run.run_options,
        run.observer,
    );
    let mut steps: Vec<ModelStep> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    // The session sees the tables ingestion just created once its catalog
    // lists the lake again.
    let session = match (crate::failpoint::check("session-build"), session) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok(()), Ok((ctx, catalog))) => catalog.refresh().await.map(|()| (ctx, catalog)),
    };
    if let Err(e) = &session {
        tracing::error!(error = %e, "could not start the models");
        errors.push(format!("could not start the models, none ran: {e}"));
    }
    let mut stopped: Option<String> = None;
    let mut failed: HashSet<String> = HashSet::new();
    let models: Vec<&crate::pipeline::Model> = pipeline
        .models
        .iter()
        .filter(|m| chosen.contains(&m.table()))
        .collect();
    let mut outcomes: Vec<Option<ModelStep>> = models.iter().map(|_| None).collect();
    let not_run = |table: String, why: String| ModelStep {
        status: "not run".into(),
        message: Some(why),
        report: ModelReport {
            table,
            ..Default::default()
        },
    };
    // Models run in waves: every model whose inputs are all done runs at
    // the same time as the others ready with it (at most
    // `MODELS_AT_ONCE`), so independent models (two gold tables over one
    // silver table) overlap their opening, planning, file creation and
    // commits. A wave's models see the tables of every wave before it.
    loop {
        let pending = |table: &str, outcomes: &[Option<ModelStep>]| {
            models
                .iter()
                .zip(outcomes)
                .any(|(m, o)| o.is_none() && m.table() == table)
        };
        let ready: Vec<usize> = (0..models.len())
            .filter(|&i| {
                outcomes[i].is_none()
                    && models[i]
                        .inputs
                        .iter()
                        .all(|input| !pending(input, &outcomes))
            })
            .take(MODELS_AT_ONCE)
            .collect();
        if ready.is_empty() {
            break;
        }
        let mut running = Vec::new();
        for &i in &ready {
            let m = models[i];
            let table = m.table();
            let (ctx, _) = match (&session, &stopped) {
                (Ok(s), None) => s,
                (_, why) => {
                    outcomes[i] = Some(not_run(
                        table,
                        why.clone().unwrap_or_else(|| {
                            "the models could not start (see the run's errors)".into()
                        }),
                    ));
                    continue;
                }
            };
            if let Some(up) = m.inputs.iter().find(|i| failed.contains(*i)) {
                failed.insert(table.clone());
                outcomes[i] = Some(not_run(table, format!("{up} failed")));
                continue;
            }
            running.push(async move {
                let progress = observer.model_started(&table, &m.sql_file);
                let span = tracing::info_span!("model", model = %table);
                let outcome =
                    model::run_model(ctx, lake, m, run_id, started_at, run_options.refresh)
                        .instrument(span)
                        .await;
                progress.finish();
                // Logged as each model ends, not when its wave does.
                let step = match outcome {
                    Ok(r) => {
                        tracing::info!(model = %table, rows = r.rows_written, quarantined = r.quarantined, duplicates = r.duplicates, skipped = r.skipped, "model done");
                        ModelStep {
                            status: if r.skipped {
                                "unchanged".into()
                            } else {
                                "succeeded".into()
                            },
                            message: None,
                            report: r,
                        }
                    }
                    Err(e) => {
                        let e = model::explain(ctx, m, e).await.in_model(&table);
                        tracing::error!(model = %table, error = %e, "model failed");
                        ModelStep {
                            status: "failed".into(),
                            message: Some(e.to_string()),
                            report: ModelReport {
                                table,
                                ..Default::default()
                            },
                        }
                    }
                };
                (i, step)
            });
        }
        if running.is_empty() {
            continue;
        }
        for (i, step) in futures::future::join_all(running).await {
            if step.status == "failed" {
                errors.extend(step.message.clone());
                failed.insert(step.report.table.clone());
            }
            outcomes[i] = Some(step);
        }
        let Ok((_, catalog)) = &session else { continue };
        let refreshed = match crate::failpoint::check("catalog-refresh") {
            Ok(()) => catalog.refresh().await,
            Err(e) => Err(e),
        };
        if let Err(e) = refreshed {
            let after = ready
                .iter()
                .map(|&i| models[i].table())
                .collect::<Vec<_>>()
                .join(", ");
            tracing::error!(error = %e, "could not list the lake's tables after {after}");
            errors.push(format!(
                "could not list the lake's tables after {after}; the models after it did not run: {e}"
            ));
            stopped = Some(format!(
                "the lake's tables could not be listed after {after}"
            ));
        }
    }
    steps.extend(outcomes.into_iter().flatten());
    Phase { steps, errors }
}

/// At most this many models run at the same time (see [`run_models`]).
const MODELS_AT_ONCE: usize = 4;

/// Compacts the tables this run committed to (and the system tables) where
/// partitions gathered more small files than the model's
/// `compact_small_files`. A failure is reported, never fails the run: its
/// data is committed already.
async fn compact_written(lake: &Lake, pipeline: &Pipeline, report: &RunReport) -> Vec<String> {
    use crate::maintain::{compact_if_fragmented, TableRef, DEFAULT_COMPACT_SMALL_FILES};
    let mut targets: Vec<(TableRef, usize)> = Vec::new();
    let table = |name: String, folder: String| TableRef { name, folder };
    // A run that changed nothing added one row to system.runs, nothing else.
    let changed = !report.changed_nothing();
    for s in report
        .sources
        .iter()
        .filter(|s| changed && !s.report.files.is_empty() && s.report.version.is_some())
    {
        targets.push((
            table(format!("bronze.{}", s.name), ingest::bronze_table(&s.name)),
            DEFAULT_COMPACT_SMALL_FILES,
        ));
        targets.push((
            table(
                format!("quarantine.bronze_{}", s.name),
                ingest::reject_table(&s.name),
            ),
            DEFAULT_COMPACT_SMALL_FILES,
        ));
    }
    for m in report
        .models
        .iter()
        .filter(|m| changed && !m.report.skipped && m.report.version.is_some())
    {
        let Some(model) = pipeline.models.iter().find(|p| p.table() == m.report.table) else {
            continue;
        };
        let threshold = model.settings.compact_small_files;
        targets.push((
            table(
                model.table(),
                crate::catalog::layer_folder(&model.layer, &model.name),
            ),
            threshold,
        ));
        targets.push((
            table(
                format!("quarantine.{}_{}", model.layer, model.name),
                model::quarantine_folder(model),
            ),
            threshold,
        ));
    }
    let system: &[&str] = if changed {
        &["runs", "steps", "expectations"]
    } else {
        &["runs"]
    };
    for name in system {
        targets.push((
            table(
                format!("system.{name}"),
                crate::catalog::layer_folder("system", name),
            ),
            DEFAULT_COMPACT_SMALL_FILES,
        ));
    }
    // Each check opens its table (a log replay): a few at a time.
    use futures::StreamExt;
    let checked: Vec<_> = futures::stream::iter(targets)
        .map(|(t, threshold)| async move {
            let outcome = compact_if_fragmented(lake, &t, threshold, &report.run_id).await;
            (t, outcome)
        })
        .buffered(4)
        .collect()
        .await;
    let mut notes = Vec::new();
    for (t, outcome) in checked {
        match outcome {
            Ok(Some(r)) if r.version.is_some() => {
                tracing::info!(table = %t.name, removed = r.files_removed, added = r.files_added, "compacted");
                notes.push(format!(
                    "{}: compacted {} small files into {} ({})",
                    t.name,
                    r.files_removed,
                    r.files_added,
                    crate::text::plural(r.partitions, "partition")
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(table = %t.name, error = %e, "compaction failed");
                notes.push(format!(
                    "{}: compaction failed (the run's data is committed; `lakehouse optimize {}` retries): {e}",
                    t.name, t.name
                ));
            }
        }
    }
    notes
}

/// Files under the lake's `landing/` that no source's glob matches (hidden
/// files, such as `.DS_Store`, aside). A listing failure is logged and
/// reports nothing: this is a hint, not part of the run's work.
async fn unread_landing_files(lake: &Lake, pipeline: &Pipeline) -> Vec<String> {
    let landed = match lake.glob("landing/**/*").await {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!(error = %e, "could not list landing/ to look for files no source reads");
            return vec![];
        }
    };
    let patterns: Vec<glob::Pattern> = pipeline
        .sources
        .iter()
        .filter_map(|s| glob::Pattern::new(s.csv.files.trim_start_matches('/')).ok())
        .collect();
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    landed
        .into_iter()
        .map(|f| f.name)
        .filter(|name| {
            let hidden = name.rsplit('/').next().is_some_and(|n| n.starts_with('.'));
            !hidden && !patterns.iter().any(|p| p.matches_with(name, options))
        })
        .collect()
}
