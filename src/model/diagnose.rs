//! When a model fails on one value (`to_date('31/02/2025', '%d/%m/%Y')`, a
//! CAST of `'n/a'` to a number), the engine's error names the value and
//! nothing else. This finds where the value came from: the input column
//! that holds it, the landed file and line of that row (bronze carries
//! them), and the line of the model's SQL that reads the column.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::functions::string::expr_fn::btrim;
use datafusion::logical_expr::{ident, lit, Expr};
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
use crate::ingest::{SOURCE_FILE, SOURCE_LINE};
use crate::pipeline::Model;

/// The value an engine error says it could not parse or cast.
fn bad_value(message: &str) -> Option<&str> {
    for marker in ["parsing timestamp from '", "Cannot cast string '"] {
        if let Some(at) = message.find(marker) {
            let rest = &message[at + marker.len()..];
            let end = rest.find('\'')?;
            return Some(&rest[..end]);
        }
    }
    None
}

/// Where a bad value was found.
#[derive(Debug, PartialEq)]
struct Found {
    table: String,
    column: String,
    /// `(file, line)` for tables with lineage columns.
    origin: Option<(String, i64)>,
}

/// What kind of engine error `err` is, from its type; an error of a job
/// that ran on a cluster arrives as the job's text, so for those the text
/// says it.
#[derive(Debug, PartialEq)]
enum Kind {
    Ambiguous,
    OutOfMemory,
    Other,
}

fn kind(err: &Error) -> Kind {
    use datafusion::common::SchemaError;
    use datafusion::error::DataFusionError;
    let mut err = err;
    while let Error::Model { source, .. } = err {
        err = source;
    }
    let Error::DataFusion(e) = err else {
        return Kind::Other;
    };
    match e.find_root() {
        DataFusionError::SchemaError(e, _)
            if matches!(e.as_ref(), SchemaError::AmbiguousReference { .. }) =>
        {
            Kind::Ambiguous
        }
        DataFusionError::ResourcesExhausted(_) => Kind::OutOfMemory,
        DataFusionError::Execution(text) if text.starts_with("Job ") => {
            if text.contains("Resources exhausted") {
                Kind::OutOfMemory
            } else {
                Kind::Other
            }
        }
        _ => Kind::Other,
    }
}

/// `err` with what the model's inputs say about the value it names; `err`
/// itself when it names none or the value is not found.
pub async fn explain(ctx: &SessionContext, model: &Model, err: Error) -> Error {
    let message = err.to_string();
    let kind = kind(&err);
    if kind == Kind::Ambiguous && model.sql.to_uppercase().contains("UNION") {
        // DataFusion gives the columns of a UNION the names of its first
        // SELECT; a later SELECT's bare column named like one of those
        // collides with it (apache/datafusion#5410 and its kin).
        return Error::Model {
            model: model.table(),
            source: Box::new(Error::Diagnosed(format!(
                "{message}. In a UNION, give every column of every SELECT its name with AS (`is_active AS _active_text`), not only in the first one"
            ))),
        };
    }
    if kind == Kind::OutOfMemory {
        // DataFusion's own advice names its configuration keys, which a
        // pipeline does not set: say what to do here.
        return Error::Model {
            model: model.table(),
            source: Box::new(Error::Diagnosed(format!(
                "{message}\nThe model needs more memory than the engine may hold: run with a larger --memory-limit (or LAKEHOUSE_MEMORY_LIMIT), e.g. --memory-limit 4G. Nothing was committed for this model"
            ))),
        };
    }
    let Some(value) = bad_value(&message) else {
        return err;
    };
    let found = match find(ctx, model, value).await {
        Ok(Some(found)) => found,
        Ok(None) => return err,
        Err(e) => {
            tracing::debug!(error = %e, "could not look for the failing value in the inputs");
            return err;
        }
    };
    let row = match &found.origin {
        Some((file, line)) => format!(" from {file} line {line}"),
        None => String::new(),
    };
    let format = message
        .split("using format '")
        .nth(1)
        .and_then(|f| f.split('\'').next());
    let sql_line = sql_line(&model.sql, &found.column, format)
        .map(|(n, text)| format!(" ({}:{n}: `{text}`)", model.sql_file.display()))
        .unwrap_or_default();
    let parse_hint = if message.contains("parsing timestamp") {
        "Parse it with try_to_date(value, format, ...) or try_to_timestamp(value, format, ...), which give NULL for a value no format matches, and add an expectation to quarantine those rows"
    } else {
        "Cast it with TRY_CAST, which gives NULL for a value that does not convert, and add an expectation to quarantine those rows"
    };
    Error::Model {
        model: model.table(),
        source: Box::new(Error::Diagnosed(format!(
            "the value '{value}' of {}.{}{row} does not convert{sql_line}: {message}. {parse_hint}. Nothing was committed for this model",
            found.table, found.column
        ))),
    }
}

/// The first input row that holds `value` (trimmed) in a text column.
async fn find(ctx: &SessionContext, model: &Model, value: &str) -> Result<Option<Found>> {
    for input in &model.inputs {
        let Ok(df) = ctx.table(input.as_str()).await else {
            continue;
        };
        let schema = df.schema().as_arrow().clone();
        let text: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| {
                !f.name().starts_with('_')
                    && matches!(
                        f.data_type(),
                        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
                    )
            })
            .map(|f| f.name().clone())
            .collect();
        let Some(matches) = text
            .iter()
            .map(|c| btrim(vec![ident(c)]).eq(lit(value)))
            .reduce(Expr::or)
        else {
            continue;
        };
        let lineage = schema.index_of(SOURCE_FILE).is_ok() && schema.index_of(SOURCE_LINE).is_ok();
        let mut shown: Vec<Expr> = text.iter().map(|c| ident(c)).collect();
        if lineage {
            shown.push(ident(SOURCE_FILE));
            shown.push(ident(SOURCE_LINE));
        }
        let batches = df
            .filter(matches)?
            .select(shown)?
            .limit(0, Some(1))?
            .collect()
            .await?;
        let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
            continue;
        };
        let casted = |i: usize| datafusion::arrow::compute::cast(batch.column(i), &DataType::Utf8);
        let mut column = None;
        for (i, name) in text.iter().enumerate() {
            let values = casted(i)?;
            let values = values.as_string::<i32>();
            if values.is_valid(0) && values.value(0).trim() == value {
                column = Some(name.clone());
                break;
            }
        }
        let Some(column) = column else { continue };
        let origin = if lineage {
            let file = casted(text.len())?;
            let line =
                datafusion::arrow::compute::cast(batch.column(text.len() + 1), &DataType::Int64)?;
            let line = line.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            Some((file.as_string::<i32>().value(0).to_string(), line.value(0)))
        } else {
            None
        };
        return Ok(Some(Found {
            table: input.clone(),
            column,
            origin,
        }));
    }
    Ok(None)
}

/// The line of `sql` (1-based, trimmed) that converts `column`: the first
/// one naming it with the `format` the error names, else with a
/// conversion, else the first naming it.
fn sql_line(sql: &str, column: &str, format: Option<&str>) -> Option<(usize, String)> {
    let names = |line: &str| {
        let lower = line.to_lowercase();
        lower.match_indices(&column.to_lowercase()).any(|(at, m)| {
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !word(lower[..at].chars().last()) && !word(lower[at + m.len()..].chars().next())
        })
    };
    let converts = |line: &str| {
        let lower = line.to_lowercase();
        ["to_date", "to_timestamp", "cast", "::"]
            .iter()
            .any(|f| lower.contains(f))
    };
    let lines: Vec<&str> = sql.lines().collect();
    let pick = format
        .and_then(|f| lines.iter().position(|l| names(l) && l.contains(f)))
        .or_else(|| lines.iter().position(|l| names(l) && converts(l)))
        .or_else(|| lines.iter().position(|l| names(l)))?;
    Some((pick + 1, lines[pick].trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_taken_from_the_engines_messages() {
        assert_eq!(
            bad_value("Execution error: Error parsing timestamp from '31/02/2025' using format '%d/%m/%Y': input is out of range"),
            Some("31/02/2025")
        );
        assert_eq!(
            bad_value("Arrow error: Cast error: Cannot cast string 'n/a' to value of Int64 type"),
            Some("n/a")
        );
        assert_eq!(bad_value("Arrow error: Divide by zero error"), None);
    }

    #[test]
    fn errors_are_told_apart_by_their_type() {
        use datafusion::common::{Column, SchemaError};
        use datafusion::error::DataFusionError as E;
        let oom = || E::ResourcesExhausted("Additional allocation failed".into());
        let in_model = |e: Error| Error::Model {
            model: "silver.x".into(),
            source: Box::new(e),
        };
        assert_eq!(kind(&Error::DataFusion(oom())), Kind::OutOfMemory);
        assert_eq!(
            kind(&in_model(Error::DataFusion(E::Context(
                "sorting".into(),
                Box::new(oom())
            )))),
            Kind::OutOfMemory
        );
        let ambiguous = E::SchemaError(
            Box::new(SchemaError::AmbiguousReference {
                field: Box::new(Column::new_unqualified("a")),
            }),
            Box::new(None),
        );
        assert_eq!(
            kind(&in_model(Error::DataFusion(ambiguous))),
            Kind::Ambiguous
        );
        // A cluster job's failure is its text.
        let remote = E::Execution("Job abc failed: Resources exhausted: ...".into());
        assert_eq!(kind(&Error::DataFusion(remote)), Kind::OutOfMemory);
        // Text alone elsewhere is not taken for the type.
        assert_eq!(
            kind(&Error::Usage("Resources exhausted".into())),
            Kind::Other
        );
        let said = E::Execution("value 'Resources exhausted' is bad".into());
        assert_eq!(kind(&Error::DataFusion(said)), Kind::Other);
    }

    #[test]
    fn the_sql_line_is_the_one_converting_the_column() {
        let sql = "SELECT\n  joined AS joined_text,\n  to_date(joined, '%Y-%m-%d') AS signup_date,\n  to_date(joined, '%d/%m/%Y'),\n  rejoined\nFROM bronze.users";
        assert_eq!(
            sql_line(sql, "joined", None),
            Some((3, "to_date(joined, '%Y-%m-%d') AS signup_date,".into()))
        );
        assert_eq!(
            sql_line(sql, "joined", Some("%d/%m/%Y")),
            Some((4, "to_date(joined, '%d/%m/%Y'),".into()))
        );
        assert_eq!(
            sql_line(sql, "rejoined", None),
            Some((5, "rejoined".into()))
        );
        assert_eq!(sql_line(sql, "join", None), None);
    }
}
