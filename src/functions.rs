//! SQL functions the pipelines need and DataFusion lacks.
//!
//! `try_to_timestamp(text, format, ...)`: parses text with the first chrono
//! strftime format that matches the whole value and returns a UTC
//! microsecond timestamp, or NULL when none does. A date-only format
//! (`%d/%m/%Y`) gives midnight UTC. DataFusion's own `to_timestamp` fails
//! the query on the first bad value, and a CAST accepts more shapes than a
//! strict pipeline wants (dates alone, offsets).
//!
//! `try_to_date(text, format, ...)`: the same, returning a DATE; a format
//! with a time of day (`%Y-%m-%d %H:%M`) keeps the date part.

use std::sync::Arc;

use chrono::format::{parse, Item, Parsed, StrftimeItems};
use datafusion::arrow::array::{Array, AsArray, Date32Builder, TimestampMicrosecondBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(TryParse::new(Target::Timestamp)));
    ctx.register_udf(ScalarUDF::from(TryParse::new(Target::Date)));
}

/// What a `try_to_*` function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Timestamp,
    Date,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TryParse {
    target: Target,
    signature: Signature,
}

impl TryParse {
    fn new(target: Target) -> Self {
        Self {
            target,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn utc() -> DataType {
    crate::delta::utc_timestamp()
}

/// Parses `value` with the first of `formats` (pre-compiled strftime
/// items) that matches it whole: microseconds since the epoch, UTC. A
/// date-only format gives midnight.
pub fn parse_with(value: &str, formats: &[Vec<Item<'static>>]) -> Option<i64> {
    let value = value.trim();
    for items in formats {
        let mut parsed = Parsed::new();
        if parse(&mut parsed, value, items.iter()).is_err() {
            continue;
        }
        if let Ok(dt) = parsed.to_naive_datetime_with_offset(0) {
            return Some(dt.and_utc().timestamp_micros());
        }
        // No time of day in the format: the date at midnight.
        if parsed.hour_div_12.is_none() && parsed.hour_mod_12.is_none() {
            if let Ok(d) = parsed.to_naive_date() {
                return Some(
                    d.and_time(chrono::NaiveTime::MIN)
                        .and_utc()
                        .timestamp_micros(),
                );
            }
        }
    }
    None
}

/// Days since the epoch of the date `value` holds in one of `formats`.
pub fn parse_date_with(value: &str, formats: &[Vec<Item<'static>>]) -> Option<i32> {
    let value = value.trim();
    for items in formats {
        let mut parsed = Parsed::new();
        if parse(&mut parsed, value, items.iter()).is_err() {
            continue;
        }
        // A format with a time of day must hold a valid one too.
        let time_ok = (parsed.hour_div_12.is_none() && parsed.hour_mod_12.is_none())
            || parsed.to_naive_time().is_ok();
        if let (true, Ok(d)) = (time_ok, parsed.to_naive_date()) {
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
            return i32::try_from((d - epoch).num_days()).ok();
        }
    }
    None
}

fn compile(function: &str, format: &str) -> Result<Vec<Item<'static>>> {
    let items: Vec<Item<'static>> = StrftimeItems::new(format).parse_to_owned().map_err(|e| {
        datafusion::error::DataFusionError::Execution(format!(
            "{function}: bad format `{format}`: {e}"
        ))
    })?;
    Ok(items)
}

impl ScalarUDFImpl for TryParse {
    fn name(&self) -> &str {
        match self.target {
            Target::Timestamp => "try_to_timestamp",
            Target::Date => "try_to_date",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if args.len() < 2 {
            return datafusion::common::plan_err!(
                "{}(text, format, ...) needs a value and at least one format, e.g. {}(signup, '%d/%m/%Y')",
                self.name(),
                self.name()
            );
        }
        Ok(match self.target {
            Target::Timestamp => utc(),
            Target::Date => DataType::Date32,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut formats = Vec::new();
        for f in &args.args[1..] {
            match f {
                ColumnarValue::Scalar(
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::Utf8View(Some(s))
                    | ScalarValue::LargeUtf8(Some(s)),
                ) => formats.push(compile(self.name(), s)?),
                _ => return exec_err!("{}: formats must be string literals", self.name()),
            }
        }
        let values = args.args[0].clone().into_array(args.number_rows)?;
        let values = datafusion::arrow::compute::cast(&values, &DataType::Utf8View)?;
        let values = values.as_string_view();
        let array: Arc<dyn Array> = match self.target {
            Target::Timestamp => {
                let mut out = TimestampMicrosecondBuilder::with_capacity(values.len());
                for v in values.iter() {
                    out.append_option(v.and_then(|v| parse_with(v, &formats)));
                }
                Arc::new(out.finish().with_timezone("UTC"))
            }
            Target::Date => {
                let mut out = Date32Builder::with_capacity(values.len());
                for v in values.iter() {
                    out.append_option(v.and_then(|v| parse_date_with(v, &formats)));
                }
                Arc::new(out.finish())
            }
        };
        Ok(ColumnarValue::Array(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_whole_values_in_the_given_formats() {
        let f = vec![
            compile("t", "%Y-%m-%dT%H:%M:%S").unwrap(),
            compile("t", "%Y-%m-%d %H:%M:%S").unwrap(),
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
        let dm = vec![compile("t", "%d/%m/%Y %H:%M").unwrap()];
        assert_eq!(parse_with("01/03/2024 10:20", &dm), Some(1709288400000000));
    }

    #[test]
    fn a_date_only_format_gives_midnight_and_dates_keep_the_date_part() {
        let day_first = vec![compile("t", "%d/%m/%Y").unwrap()];
        assert_eq!(parse_with("01/03/2024", &day_first), Some(1709251200000000));
        assert_eq!(parse_with(" 1/3/2024 ", &day_first), Some(1709251200000000));
        assert_eq!(parse_with("31/02/2025", &day_first), None);
        assert_eq!(parse_with("2024-03-01", &day_first), None);
        assert_eq!(parse_with("", &day_first), None);
        // 2024-03-01 is day 19783.
        assert_eq!(parse_date_with("01/03/2024", &day_first), Some(19783));
        assert_eq!(parse_date_with("31/02/2025", &day_first), None);
        assert_eq!(parse_date_with("29/02/2024", &day_first), Some(19782));
        assert_eq!(parse_date_with("29/02/2023", &day_first), None);
        let with_time = vec![compile("t", "%Y-%m-%d %H:%M").unwrap()];
        assert_eq!(parse_date_with("2024-03-01 23:59", &with_time), Some(19783));
        assert_eq!(parse_date_with("2024-03-01 24:10", &with_time), None);
        assert_eq!(parse_date_with("2024-03-01", &with_time), None);
        // The first format that matches wins.
        let both = vec![
            compile("t", "%Y-%m-%d").unwrap(),
            compile("t", "%d.%m.%Y").unwrap(),
        ];
        assert_eq!(parse_date_with("01.03.2024", &both), Some(19783));
        assert_eq!(parse_date_with("2024-03-01", &both), Some(19783));
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
