//! The terminal side of a run: spinners and progress bars on a terminal,
//! a log line otherwise, and the one-screen summary at the end. The runner
//! and ingestion only call [`Observer`] and [`Progress`]; nothing else in
//! the library draws.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::{Observer, Progress};
use crate::runlog::RunReport;
use crate::text::plural;

/// Draws a run on standard error; models that run at the same time get a
/// line each.
#[derive(Default)]
pub struct Console {
    bars: indicatif::MultiProgress,
}

fn is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// A spinner with `label` on a terminal; a log line and nothing drawn
/// otherwise.
fn spinner(bars: &indicatif::MultiProgress, label: &str, template: &str) -> ProgressBar {
    if !is_terminal() {
        tracing::info!("{label}");
        return ProgressBar::hidden();
    }
    let bar = bars.add(ProgressBar::new_spinner());
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(label.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn at(&self, done: u64) {
        self.0.set_position(done);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Observer for Console {
    fn source_started(&self, source: &str, files: &str) -> Arc<dyn Progress> {
        Arc::new(Bar(spinner(
            &self.bars,
            &format!("bronze.{source}: ingesting {files}"),
            "{spinner} {elapsed:>4} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )))
    }

    fn model_started(&self, table: &str, sql_file: &std::path::Path) -> Arc<dyn Progress> {
        Arc::new(Bar(spinner(
            &self.bars,
            &format!("{table}: running {}", sql_file.display()),
            "{spinner} {elapsed:>4} {msg}",
        )))
    }
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
    use crate::text::Align::{Left, Right};
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    let mut out = crate::text::table(
        &rows,
        &[Left, Left, Right, Right, Right, Right, Right],
        true,
    );
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
            ": nothing new, no table changed"
        } else {
            ""
        }
    ));
    for m in &report.maintenance {
        out.push_str(&format!("maintenance: {m}\n"));
    }
    for e in &report.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}
