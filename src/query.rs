//! `lakehouse query` and `lakehouse tables`: SQL over the lake for people,
//! printed as an aligned table, CSV or JSON. Only queries are accepted.

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::storage::Lake;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Refuses anything but a read-only query (SELECT, WITH, SHOW, EXPLAIN of a
/// query), with the same rules as the server.
pub fn check_read_only(sql: &str) -> Result<()> {
    crate::sql_policy::check_sql(sql).map_err(|e| Error::Usage(e.message))
}

pub async fn run_query(
    ctx: &SessionContext,
    sql: &str,
    format: Format,
    out: &mut dyn std::io::Write,
) -> Result<u64> {
    check_read_only(sql)?;
    let df = ctx
        .sql_with_options(sql, crate::sql_policy::read_only_options())
        .await?;
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

/// A query's rows as JSON objects, column name to value (NULL as null):
/// for the commands that print or compute from small results.
pub async fn rows_json(ctx: &SessionContext, sql: &str) -> Result<Vec<serde_json::Value>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut buffer = Vec::new();
    {
        let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buffer);
        for b in &batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    if buffer.is_empty() {
        return Ok(vec![]);
    }
    serde_json::from_slice(&buffer)
        .map_err(|e| Error::Internal(format!("query result is not JSON: {e}")))
}

/// What `lakehouse tables` and `GET /tables` say about one table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    pub version: u64,
    pub rows: u64,
    pub files: usize,
    pub bytes: u64,
    pub partition_columns: Vec<String>,
}

/// `folder` is the table's, relative to the lake root.
async fn table_info(
    lake: &Lake,
    schema: &str,
    name: &str,
    folder: &str,
) -> Result<Option<(TableInfo, deltalake::DeltaTable)>> {
    let Some(table) = crate::delta::open(&lake.url(folder), lake.storage_options()).await? else {
        return Ok(None);
    };
    let (rows, files, bytes) = crate::delta::row_count(&table).await?;
    let partition_columns = table.snapshot()?.metadata().partition_columns().to_vec();
    let info = TableInfo {
        schema: schema.to_string(),
        name: name.to_string(),
        version: table.version().unwrap_or(0),
        rows,
        files,
        bytes,
        partition_columns: partition_columns.to_vec(),
    };
    Ok(Some((info, table)))
}

/// Every table of the lake, layer by layer.
pub async fn table_infos(lake: &Lake) -> Result<Vec<TableInfo>> {
    let mut out = Vec::new();
    for t in crate::catalog::list_tables(lake).await? {
        if let Some((info, _)) = table_info(lake, t.schema, &t.name, &t.folder).await? {
            out.push(info);
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Column {
    pub name: String,
    pub r#type: String,
    pub nullable: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Partition {
    pub values: Vec<Option<String>>,
    pub rows: u64,
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TableDetail {
    #[serde(flatten)]
    pub info: TableInfo,
    pub columns: Vec<Column>,
    pub partitions: Vec<Partition>,
}

/// One table with its columns and partitions; `None` if there is no such table.
pub async fn table_detail(lake: &Lake, schema: &str, name: &str) -> Result<Option<TableDetail>> {
    let Some(folder) = crate::catalog::table_folder(schema, name) else {
        return Ok(None);
    };
    if crate::catalog::parse_table_name(name)
        .ok()
        .flatten()
        .map(|(b, _)| b)
        != Some(name)
    {
        return Ok(None);
    }
    let Some((info, table)) = table_info(lake, schema, name, &folder).await? else {
        return Ok(None);
    };
    let arrow = table.snapshot()?.snapshot().arrow_schema();
    let columns = arrow
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            r#type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect();
    let partitions = crate::delta::partition_stats(&table)
        .await?
        .into_iter()
        .map(|(values, rows, files, bytes)| Partition {
            values,
            rows,
            files,
            bytes,
        })
        .collect();
    Ok(Some(TableDetail {
        info,
        columns,
        partitions,
    }))
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
    for t in table_infos(lake).await? {
        rows.push([
            format!("{}.{}", t.schema, t.name),
            t.version.to_string(),
            t.rows.to_string(),
            t.partition_columns.join(", "),
            t.files.to_string(),
            crate::text::human_bytes(t.bytes),
        ]);
    }
    use crate::text::Align::{Left, Right};
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    let out = crate::text::table(&rows, &[Left, Right, Right, Left, Right, Right], false);
    Ok(out)
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
            "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/x.csv'",
            "EXPLAIN ANALYZE CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "SET datafusion.execution.target_partitions = 1",
            "SELECT 1; SELECT 2",
        ] {
            assert!(check_read_only(bad).is_err(), "{bad} was accepted");
        }
    }
}
