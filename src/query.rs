//! `lakehouse query` and `lakehouse tables`: SQL over the lake for people,
//! printed as an aligned table, CSV or JSON. Only queries are accepted.

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use futures::TryStreamExt;

use crate::catalog::SCHEMAS;
use crate::error::{Error, Result};
use crate::storage::Lake;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Refuses anything but a read-only query (SELECT, WITH, SHOW, EXPLAIN, DESCRIBE).
pub fn check_read_only(sql: &str) -> Result<()> {
    let statements =
        DFParser::parse_sql(sql).map_err(|e| Error::Usage(format!("SQL does not parse: {e}")))?;
    if statements.len() != 1 {
        return Err(Error::Usage(format!(
            "give exactly one statement, found {}",
            statements.len()
        )));
    }
    match &statements[0] {
        DFStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_) | Statement::ShowTables { .. } | Statement::ShowColumns { .. } | Statement::ExplainTable { .. } | Statement::Explain { .. } => Ok(()),
            other => Err(Error::Usage(format!(
                "only queries are allowed here; `{}` would change something. Tables are written by `lakehouse run`.",
                other.to_string().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            ))),
        },
        DFStatement::Explain(_) => Ok(()),
        _ => Err(Error::Usage("only queries are allowed here (no CREATE, COPY or other statements)".into())),
    }
}

pub async fn run_query(
    ctx: &SessionContext,
    sql: &str,
    format: Format,
    out: &mut dyn std::io::Write,
) -> Result<u64> {
    check_read_only(sql)?;
    let df = ctx.sql(sql).await?;
    let mut stream = df.execute_stream().await?;
    let mut rows = 0u64;
    let io = |e: std::io::Error| Error::io("write output", e);
    match format {
        Format::Table => {
            // An aligned table needs every width first, so this format
            // collects the result; use csv or json for large results.
            let mut batches: Vec<RecordBatch> = Vec::new();
            while let Some(b) = stream.try_next().await? {
                rows += b.num_rows() as u64;
                batches.push(b);
            }
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?;
            writeln!(out, "{text}").map_err(io)?;
            writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" }).map_err(io)?;
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            while let Some(b) = stream.try_next().await? {
                rows += b.num_rows() as u64;
                w.write(&b)?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(out);
            while let Some(b) = stream.try_next().await? {
                rows += b.num_rows() as u64;
                w.write(&b)?;
            }
            w.finish()?;
        }
    }
    Ok(rows)
}

/// One line per table: layer, name, version, rows, partition columns, files, size.
pub async fn tables(lake: &Lake) -> Result<String> {
    let mut rows: Vec<[String; 6]> = vec![[
        "table".into(),
        "version".into(),
        "rows".into(),
        "partitioned by".into(),
        "files".into(),
        "size".into(),
    ]];
    for (schema, folder) in SCHEMAS {
        for name in lake.list_folders(folder).await? {
            let Some(table) = crate::delta::open(
                &lake.url(&format!("{folder}/{name}")),
                lake.storage_options(),
            )
            .await?
            else {
                continue;
            };
            let (count, files, bytes) = crate::delta::row_count(&table).await?;
            let parts = table.snapshot()?.metadata().partition_columns().join(", ");
            rows.push([
                format!("{schema}.{name}"),
                table.version().unwrap_or(0).to_string(),
                count.to_string(),
                parts,
                files.to_string(),
                human_bytes(bytes),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if matches!(i, 1 | 2 | 4 | 5) {
                    format!("{:>w$}", c, w = widths[i])
                } else {
                    format!("{:<w$}", c, w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queries_pass() {
        assert!(check_read_only("SELECT 1").is_ok());
        assert!(check_read_only("WITH a AS (SELECT 1) SELECT * FROM a").is_ok());
        for bad in [
            "DROP TABLE gold.x",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "INSERT INTO gold.x VALUES (1)",
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            "SELECT 1; SELECT 2",
        ] {
            assert!(check_read_only(bad).is_err(), "{bad} was accepted");
        }
    }
}
