//! `lakehouse run`: ingest every source, run every model in dependency order,
//! record the run in the system tables and print a one-screen summary.
//! A failing source or model is reported and turned into a failed run at the
//! end; models downstream of a failed model are not run.

use std::collections::HashSet;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::Result;
use crate::ingest::{self, SourceReport};
use crate::model::{self, ModelReport};
use crate::pipeline::Pipeline;
use crate::session::{self, SessionOptions};
use crate::storage::Lake;

pub use crate::runlog::{ModelStep, RunReport, SourceStep};

fn spinner(label: &str) -> ProgressBar {
    if console_is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(label.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    } else {
        tracing::info!("{label}");
        ProgressBar::hidden()
    }
}

fn console_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// A run id: sortable by time, unique.
/// `n` and the noun, plural unless `n` is 1: "1 row", "2 rows". Nouns
/// ending in "s" are not in use.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

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
) -> Result<RunReport> {
    let chosen = selected(pipeline, &run_options.select)?;
    let run_id = run_id.to_string();
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let span = tracing::info_span!("run", run_id = %run_id);
    let _guard = span.enter();
    let mut report = RunReport {
        run_id: run_id.clone(),
        started_at,
        sources: vec![],
        unread: vec![],
        models: vec![],
        errors: vec![],
        seconds: 0.0,
    };

    // Every model planned against its inputs' schemas before anything is
    // taken: a misnamed column in the settings stops the run here.
    {
        let local = SessionOptions {
            cluster: None,
            ..options.clone()
        };
        let (ctx, _) = session::build(lake, &local).await?;
        model::preflight::check(&ctx, pipeline).await?;
    }

    for source in &pipeline.sources {
        let t = Instant::now();
        let bar = spinner(&format!(
            "bronze.{}: ingesting {}",
            source.name, source.csv.files
        ));
        if !bar.is_hidden() {
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed:>4} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
        let outcome = ingest::ingest_source(
            lake,
            source,
            &run_id,
            started_at,
            &bar,
            &run_options.reingest,
        )
        .await;
        bar.finish_and_clear();
        let seconds = t.elapsed().as_secs_f64();
        match outcome {
            Ok(r) => {
                if !r.reconciled {
                    report.errors.push(format!(
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
                report.errors.extend(refused.iter().cloned());
                tracing::info!(source = %source.name, rows = r.rows, rejected = r.rejected, files = r.files.len(), skipped = r.files_skipped, "ingested");
                report.sources.push(SourceStep {
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
                report.errors.push(e.to_string());
                report.sources.push(SourceStep {
                    name: source.name.clone(),
                    status: "failed".into(),
                    message: Some(e.to_string()),
                    report: SourceReport::default(),
                    seconds,
                });
            }
        }
    }

    for name in &run_options.reingest {
        if !report
            .sources
            .iter()
            .any(|s| s.report.reingested.contains(name))
        {
            report.errors.push(format!(
                "--reingest {name}: no source found a landed file by that name. Give the name bronze records in _source_file, relative to the lake (like landing/orders/orders_00001.csv)"
            ));
        }
    }

    report.unread = unread_landing_files(lake, pipeline).await;
    for file in &report.unread {
        tracing::warn!(file = %file, "landed file matches no source's `files` glob: it is not read");
    }

    // From here on the run has started (files may have been taken): a
    // failure is recorded with the run and exits 1, not 2.
    let session = match crate::failpoint::check("session-build") {
        Ok(()) => session::build(lake, options).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &session {
        tracing::error!(error = %e, "could not start the models");
        report
            .errors
            .push(format!("could not start the models, none ran: {e}"));
    }
    let mut stopped: Option<String> = None;
    let mut failed: HashSet<String> = HashSet::new();
    for m in pipeline
        .models
        .iter()
        .filter(|m| chosen.contains(&m.table()))
    {
        let table = m.table();
        let (ctx, catalog) = match (&session, &stopped) {
            (Ok(s), None) => s,
            (_, why) => {
                report.models.push(ModelStep {
                    status: "not run".into(),
                    message: Some(why.clone().unwrap_or_else(|| {
                        "the models could not start (see the run's errors)".into()
                    })),
                    report: ModelReport {
                        table,
                        ..Default::default()
                    },
                });
                continue;
            }
        };
        if let Some(up) = m.inputs.iter().find(|i| failed.contains(*i)) {
            failed.insert(table.clone());
            report.models.push(ModelStep {
                status: "not run".into(),
                message: Some(format!("{up} failed")),
                report: ModelReport {
                    table,
                    ..Default::default()
                },
            });
            continue;
        }
        let bar = spinner(&format!("{table}: running {}", m.sql_file.display()));
        let span = tracing::info_span!("model", model = %table);
        let outcome = {
            let _g = span.enter();
            model::run_model(
                &ctx,
                lake,
                m,
                &run_id,
                started_at,
                run_options.refresh,
                options.cluster.is_some(),
            )
            .await
        };
        bar.finish_and_clear();
        match outcome {
            Ok(r) => {
                tracing::info!(model = %table, rows = r.rows_written, quarantined = r.quarantined, duplicates = r.duplicates, skipped = r.skipped, "model done");
                report.models.push(ModelStep {
                    status: if r.skipped {
                        "unchanged".into()
                    } else {
                        "succeeded".into()
                    },
                    message: None,
                    report: r,
                });
            }
            Err(e) => {
                let e = model::explain(&ctx, m, e).await.in_model(&table);
                tracing::error!(model = %table, error = %e, "model failed");
                report.errors.push(e.to_string());
                failed.insert(table.clone());
                report.models.push(ModelStep {
                    status: "failed".into(),
                    message: Some(e.to_string()),
                    report: ModelReport {
                        table: table.clone(),
                        ..Default::default()
                    },
                });
            }
        }
        let refreshed = match crate::failpoint::check("catalog-refresh") {
            Ok(()) => catalog.refresh().await,
            Err(e) => Err(e),
        };
        if let Err(e) = refreshed {
            tracing::error!(error = %e, "could not list the lake's tables after {table}");
            report.errors.push(format!(
                "could not list the lake's tables after {table}; the models after it did not run: {e}"
            ));
            stopped = Some(format!(
                "the lake's tables could not be listed after {table}"
            ));
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    if report.changed_nothing() {
        // Nothing new landed and every model was up to date: a no-op run
        // leaves the lake exactly as it was, system tables included.
        tracing::info!("nothing new: no table changed, nothing committed");
        return Ok(report);
    }
    if let Err(e) = crate::runlog::record(lake, &report).await {
        tracing::warn!(error = %e, "could not record the run in the system tables");
    }
    Ok(report)
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

/// The one-screen summary printed at the end of a run.
pub fn summary(report: &RunReport) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "table".into(),
        "status".into(),
        "rows in".into(),
        "written".into(),
        "rejected".into(),
        "duplicates".into(),
        "time".into(),
    ]];
    for s in &report.sources {
        let files = s.report.files.len();
        rows.push([
            format!("bronze.{}", s.name),
            if files == 0 && s.status == "succeeded" {
                format!("no new files ({} seen)", s.report.files_seen)
            } else {
                format!("{} ({})", s.status, plural(files as u64, "new file"))
            },
            s.report.lines.to_string(),
            s.report.rows.to_string(),
            s.report.rejected.to_string(),
            "-".into(),
            format!("{:.1}s", s.seconds),
        ]);
    }
    for m in &report.models {
        let r = &m.report;
        rows.push([
            r.table.clone(),
            if m.status == "succeeded" && !r.strategy.is_empty() {
                format!("succeeded: {}", r.strategy)
            } else {
                m.status.clone()
            },
            r.rows_in.to_string(),
            r.rows_written.to_string(),
            r.quarantined.to_string(),
            r.duplicates.to_string(),
            format!("{:.1}s", r.seconds),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i >= 2 {
                    format!("{:>w$}", c, w = widths[i])
                } else {
                    format!("{:<w$}", c, w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
            out.push('\n');
        }
    }
    for s in &report.sources {
        for f in &s.report.files {
            if f.refused.is_some() {
                continue;
            }
            if !f.missing_columns.is_empty() {
                out.push_str(&format!(
                    "  warning: bronze.{}: {} lacks column(s) {} (NULL for {})\n",
                    s.name,
                    f.file,
                    f.missing_columns.join(", "),
                    format!("its {}", plural(f.rows, "row")),
                ));
            }
            if !f.empty_columns.is_empty() {
                out.push_str(&format!(
                    "  warning: bronze.{}: {} has column(s) {} empty in every one of {}\n",
                    s.name,
                    f.file,
                    f.empty_columns.join(", "),
                    format!("its {}", plural(f.rows, "row")),
                ));
            }
        }
    }
    if !report.unread.is_empty() {
        let shown: Vec<&str> = report.unread.iter().take(5).map(String::as_str).collect();
        out.push_str(&format!(
            "  {} landed file(s) match no source's `files` glob and were not read: {}{}\n",
            report.unread.len(),
            shown.join(", "),
            if report.unread.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        ));
    }
    for src in &report.sources {
        for (name, what) in &src.report.changed {
            out.push_str(&format!(
                "  bronze.{}: {name} changed after it was ingested ({what}); \
                 its earlier rows stay, the new content is not ingested. Land corrected data under a new file name, or take it again with --reingest {name}\n",
                src.name
            ));
        }
    }
    for src in &report.sources {
        for name in &src.report.reingested {
            out.push_str(&format!(
                "  bronze.{}: {name} taken again (--reingest): {} earlier rows (bronze and rejects) replaced\n",
                src.name, src.report.rows_replaced
            ));
        }
    }
    for m in &report.models {
        for rule in m.report.rules.iter().filter(|r| r.failed > 0) {
            // A row failing two drop rules is quarantined once, under the
            // first: failed and quarantined differ.
            let outcome = match rule.action.as_str() {
                "drop" => format!("{} quarantined", plural(rule.quarantined, "row")),
                "warn" => "kept (warn)".to_string(),
                _ => "the model failed".to_string(),
            };
            out.push_str(&format!(
                "  {}: expectation {}: failed on {}, {outcome}\n",
                m.report.table,
                rule.name,
                plural(rule.failed, "row"),
            ));
        }
    }
    out.push_str(&format!(
        "run {} {} in {:.1}s{}\n",
        report.run_id,
        if report.succeeded() {
            "succeeded"
        } else {
            "FAILED"
        },
        report.seconds,
        if report.changed_nothing() {
            ": nothing new, nothing committed"
        } else {
            ""
        }
    ));
    for e in &report.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}
