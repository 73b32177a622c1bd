//! `lakehouse runs` and `lakehouse runs show RUN_ID`: the run history the
//! system tables hold, for people (an aligned table) and for scripts (JSON).

use datafusion::prelude::SessionContext;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::query::{rows_json, run_query, Format};

fn io(e: std::io::Error) -> Error {
    Error::io("write output", e)
}

async fn has_history(ctx: &SessionContext) -> Result<bool> {
    Ok(ctx.table_exist("system.runs")?)
}

const NO_RUNS: &str =
    "no run is recorded in this lake yet: `lakehouse run` records each run in system.runs";

/// The last `last` runs, newest first: when, how long, status, which steps
/// did work, and the rows they moved.
pub async fn list(
    ctx: &SessionContext,
    last: usize,
    format: Format,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    if !has_history(ctx).await? {
        return match format {
            Format::Json => writeln!(out, "[]").map_err(io),
            _ => Err(Error::Usage(NO_RUNS.into())),
        };
    }
    // A step "did work" when it ingested a file, ran a model, or failed;
    // sources that found nothing new and models up to date are left out.
    let sql = format!(
        "WITH s AS ( \
           SELECT run_id, \
             string_agg(CASE WHEN (kind = 'source' AND (files_ingested > 0 OR status <> 'succeeded')) \
                              OR (kind = 'model' AND status <> 'unchanged') THEN step END, ', ' \
                        ORDER BY CASE WHEN kind = 'source' THEN 0 WHEN step LIKE 'silver.%' THEN 1 ELSE 2 END, step) AS ran, \
             sum(CASE WHEN kind = 'source' THEN rows_in END) AS rows_landed, \
             sum(rows_written) AS rows_written, \
             sum(rows_rejected) AS rows_rejected \
           FROM system.steps GROUP BY run_id) \
         SELECT r.run_id, r.started_at, round(r.seconds, 1) AS seconds, r.status, \
           coalesce(s.ran, '') AS ran, coalesce(s.rows_landed, 0) AS rows_landed, \
           coalesce(s.rows_written, 0) AS rows_written, coalesce(s.rows_rejected, 0) AS rows_rejected \
         FROM system.runs r LEFT JOIN s ON r.run_id = s.run_id \
         ORDER BY r.started_at DESC, r.run_id DESC LIMIT {last}"
    );
    run_query(ctx, &sql, format, out).await?;
    Ok(())
}

/// Checks a run id (or `last`) before it goes into SQL.
fn run_id_literal(run_id: &str) -> Result<String> {
    if run_id.is_empty()
        || !run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::Usage(format!(
            "`{run_id}` is not a run id: give one `lakehouse runs` lists (like 20261125T220000Z-1a2b3c4d), or `last`"
        )));
    }
    Ok(format!("'{run_id}'"))
}

/// One run: its record, its steps and its rules. `run_id` may be `last`,
/// or a unique prefix of an id.
pub async fn show(
    ctx: &SessionContext,
    run_id: &str,
    format: Format,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    if !has_history(ctx).await? {
        return Err(Error::Usage(NO_RUNS.into()));
    }
    let filter = if run_id == "last" {
        "run_id = (SELECT max(run_id) FROM system.runs)".to_string()
    } else {
        let lit = run_id_literal(run_id)?;
        format!("starts_with(run_id, {lit})")
    };
    let runs = rows_json(
        ctx,
        &format!(
            "SELECT run_id, started_at, seconds, status, errors FROM system.runs WHERE {filter} ORDER BY run_id"
        ),
    )
    .await?;
    let run = match runs.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(Error::Usage(format!(
                "no run `{run_id}` in system.runs; `lakehouse runs` lists them"
            )))
        }
        many => {
            let ids: Vec<&str> = many.iter().filter_map(|r| r["run_id"].as_str()).collect();
            return Err(Error::Usage(format!(
                "`{run_id}` is the start of {} runs ({}): give more of the id",
                ids.len(),
                ids.join(", ")
            )));
        }
    };
    let id = run["run_id"].as_str().unwrap_or_default().to_string();
    let id_lit = run_id_literal(&id)?;
    let steps_sql = format!(
        "SELECT step, kind, status, files_ingested, files_refused, lines_landed, rows_in, rows_written, \
           rows_rejected, duplicates, reconciled, version, round(seconds, 2) AS seconds, message \
         FROM system.steps WHERE run_id = {id_lit} \
         ORDER BY CASE WHEN kind = 'source' THEN 0 WHEN kind = 'unread_file' THEN 3 WHEN step LIKE 'silver.%' THEN 1 ELSE 2 END, step"
    );
    let rules_sql = format!(
        "SELECT model, rule, action, \"check\", evaluated, failed, quarantined \
         FROM system.expectations WHERE run_id = {id_lit} ORDER BY model, rule"
    );
    let has_steps = ctx.table_exist("system.steps")?;
    let has_rules = ctx.table_exist("system.expectations")?;
    match format {
        Format::Json => {
            let steps = if has_steps {
                rows_json(ctx, &steps_sql).await?
            } else {
                vec![]
            };
            let rules = if has_rules {
                rows_json(ctx, &rules_sql).await?
            } else {
                vec![]
            };
            let errors: Vec<Value> = run["errors"]
                .as_str()
                .filter(|e| !e.is_empty())
                .map(|e| e.lines().map(|l| json!(l)).collect())
                .unwrap_or_default();
            let doc = json!({
                "run_id": id,
                "started_at": run["started_at"],
                "seconds": run["seconds"],
                "status": run["status"],
                "errors": errors,
                "steps": steps,
                "expectations": rules,
            });
            writeln!(out, "{doc}").map_err(io)?;
        }
        Format::Csv => {
            if has_steps {
                run_query(ctx, &steps_sql, Format::Csv, out).await?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "run {id}: {}, started {}, {:.1}s",
                run["status"].as_str().unwrap_or("?"),
                run["started_at"].as_str().unwrap_or("?"),
                run["seconds"].as_f64().unwrap_or(0.0)
            )
            .map_err(io)?;
            if let Some(errors) = run["errors"].as_str().filter(|e| !e.is_empty()) {
                for e in errors.lines() {
                    writeln!(out, "error: {e}").map_err(io)?;
                }
            }
            let recorded = |table: &'static str| {
                let sql = format!("SELECT count(*) AS n FROM {table} WHERE run_id = {id_lit}");
                async move {
                    let rows = rows_json(ctx, &sql).await?;
                    Ok::<_, Error>(rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0))
                }
            };
            if has_steps && recorded("system.steps").await? > 0 {
                writeln!(out, "\nsteps:").map_err(io)?;
                run_query(ctx, &steps_sql, Format::Table, out).await?;
                if has_rules && recorded("system.expectations").await? > 0 {
                    writeln!(out, "\nexpectations:").map_err(io)?;
                    run_query(ctx, &rules_sql, Format::Table, out).await?;
                }
            } else {
                writeln!(
                    out,
                    "no steps recorded: nothing new landed and every table was up to date"
                )
                .map_err(io)?;
            }
        }
    }
    Ok(())
}
