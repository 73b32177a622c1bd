//! SQL functions the pipelines need and DataFusion lacks.
//!
//! `try_to_timestamp(text, format, ...)`: parses text with the first chrono
//! strftime format that matches the whole value and returns a UTC
//! microsecond timestamp, or NULL when none does. DataFusion's own
//! `to_timestamp` fails the query on the first bad value, and a CAST accepts
//! more shapes than a strict pipeline wants (dates alone, offsets).

use std::sync::Arc;

use chrono::format::{parse, Item, Parsed, StrftimeItems};
use datafusion::arrow::array::{Array, AsArray, TimestampMicrosecondBuilder};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(TryToTimestamp::new()));
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TryToTimestamp {
    signature: Signature,
}

impl TryToTimestamp {
    fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Parses `value` with one of `formats` (pre-compiled strftime items).
pub fn parse_with(value: &str, formats: &[Vec<Item<'static>>]) -> Option<i64> {
    let value = value.trim();
    for items in formats {
        let mut parsed = Parsed::new();
        if parse(&mut parsed, value, items.iter()).is_ok() {
            if let Ok(dt) = parsed.to_naive_datetime_with_offset(0) {
                return Some(dt.and_utc().timestamp_micros());
            }
        }
    }
    None
}

fn compile(format: &str) -> Result<Vec<Item<'static>>> {
    let items: Vec<Item<'static>> = StrftimeItems::new(format).parse_to_owned().map_err(|e| {
        datafusion::error::DataFusionError::Execution(format!(
            "try_to_timestamp: bad format `{format}`: {e}"
        ))
    })?;
    Ok(items)
}

impl ScalarUDFImpl for TryToTimestamp {
    fn name(&self) -> &str {
        "try_to_timestamp"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if args.len() < 2 {
            return datafusion::common::plan_err!(
                "try_to_timestamp(text, format, ...) needs a value and at least one format"
            );
        }
        Ok(utc())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut formats = Vec::new();
        for f in &args.args[1..] {
            match f {
                ColumnarValue::Scalar(
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::Utf8View(Some(s))
                    | ScalarValue::LargeUtf8(Some(s)),
                ) => formats.push(compile(s)?),
                _ => return exec_err!("try_to_timestamp: formats must be string literals"),
            }
        }
        let values = args.args[0].clone().into_array(args.number_rows)?;
        let values = datafusion::arrow::compute::cast(&values, &DataType::Utf8View)?;
        let values = values.as_string_view();
        let mut out = TimestampMicrosecondBuilder::with_capacity(values.len());
        for v in values.iter() {
            out.append_option(v.and_then(|v| parse_with(v, &formats)));
        }
        let array = out.finish().with_timezone("UTC");
        Ok(ColumnarValue::Array(Arc::new(array) as Arc<dyn Array>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_whole_values_in_the_given_formats() {
        let f = vec![
            compile("%Y-%m-%dT%H:%M:%S").unwrap(),
            compile("%Y-%m-%d %H:%M:%S").unwrap(),
        ];
        assert_eq!(
            parse_with("2024-03-01T10:20:30", &f),
            Some(1709288430000000)
        );
        assert_eq!(
            parse_with("2024-03-01 10:20:30", &f),
            Some(1709288430000000)
        );
        assert_eq!(parse_with("2024-03-01", &f), None);
        assert_eq!(parse_with("2024-02-30 10:00:00", &f), None);
        assert_eq!(parse_with("2024-03-01 10:20:30Z", &f), None);
        assert_eq!(parse_with("yesterday", &f), None);
        let dm = vec![compile("%d/%m/%Y %H:%M").unwrap()];
        assert_eq!(parse_with("01/03/2024 10:20", &dm), Some(1709288400000000));
    }
}
