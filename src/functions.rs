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

/// Which argument decides how large a bounded function's result is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text's bytes times `n`.
    Repeat,
    /// `lpad(text, n [, fill])` / `rpad(...)`: `n` characters.
    Pad,
}

/// A step run on a built-in function's arguments before it runs: check
/// them, or rewrite them. [`Wrapped`] puts it in front of the function.
pub trait Before:
    std::fmt::Debug + PartialEq + Eq + std::hash::Hash + Clone + Send + Sync + 'static
{
    fn before(&self, name: &str, args: &mut ScalarFunctionArgs) -> Result<()>;
}

/// A built-in function with a [`Before`] step, and otherwise exactly the
/// built-in: name, aliases, signature, types, and its own updates when the
/// session's settings change.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Wrapped<B: Before> {
    inner: ScalarUDF,
    before: B,
}

impl<B: Before> Wrapped<B> {
    pub fn udf(inner: &ScalarUDF, before: B) -> ScalarUDF {
        ScalarUDF::new_from_impl(Wrapped {
            inner: inner.clone(),
            before,
        })
    }
}

impl<B: Before> ScalarUDFImpl for Wrapped<B> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        self.inner.return_type(args)
    }

    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(args)
    }

    fn with_updated_config(
        &self,
        config: &datafusion::common::config::ConfigOptions,
    ) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(Wrapped::udf(&inner, self.before.clone()))
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.before.before(self.inner.name(), &mut args)?;
        self.inner.invoke_with_args(args)
    }
}

/// `repeat`, `lpad` and `rpad` refuse, before allocating, a batch whose
/// results would take more than `cap` bytes. Without it one
/// `repeat('x', 2000000000)` allocates gigabytes in a single call that no
/// memory pool sees and no time limit can interrupt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bounded {
    growth: Growth,
    cap: usize,
}

/// Registers the size-checked `repeat`, `lpad` and `rpad` in place of the
/// built-in ones: a batch of results may take at most `cap` bytes.
pub fn register_bounded(ctx: &SessionContext, cap: usize) {
    use datafusion::functions::{string, unicode};
    for (inner, growth) in [
        (string::repeat(), Growth::Repeat),
        (unicode::lpad(), Growth::Pad),
        (unicode::rpad(), Growth::Pad),
    ] {
        ctx.register_udf(Wrapped::udf(inner.as_ref(), Bounded { growth, cap }));
    }
}

impl Bounded {
    /// Bytes the results of this batch would take (saturating).
    fn result_bytes(&self, args: &ScalarFunctionArgs) -> Result<u128> {
        use datafusion::arrow::compute::kernels::length::length;
        let rows = args.number_rows;
        let count = match args.args.get(1) {
            Some(c) => c.clone().into_array(rows)?,
            None => return Ok(0),
        };
        let count = datafusion::arrow::compute::cast(&count, &DataType::Int64)?;
        let count = count.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let widths: Option<Vec<u128>> = match self.growth {
            Growth::Repeat => {
                let text = args.args[0].clone().into_array(rows)?;
                let text = datafusion::arrow::compute::cast(&text, &DataType::Utf8)?;
                let bytes = length(&text)?;
                let bytes = datafusion::arrow::compute::cast(&bytes, &DataType::Int64)?;
                let bytes = bytes.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                Some(
                    bytes
                        .iter()
                        .map(|b| b.unwrap_or(0).max(0) as u128)
                        .collect(),
                )
            }
            Growth::Pad => None,
        };
        let mut total: u128 = 0;
        for (i, n) in count.iter().enumerate() {
            let n = n.unwrap_or(0).max(0) as u128;
            let width = widths.as_ref().map_or(1, |w| w[i]);
            total = total.saturating_add(n.saturating_mul(width));
        }
        Ok(total)
    }
}

impl Before for Bounded {
    fn before(&self, name: &str, args: &mut ScalarFunctionArgs) -> Result<()> {
        let bytes = self.result_bytes(args)?;
        if bytes > self.cap as u128 {
            return Err(datafusion::error::DataFusionError::ResourcesExhausted(
                format!(
                    "{name}() would build {} MiB of text in one batch; the limit is {} MiB. \
                     Ask for shorter values.",
                    bytes >> 20,
                    self.cap >> 20
                ),
            ));
        }
        Ok(())
    }
}
