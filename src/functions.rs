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
    // What casts of text to DECIMAL become (crate::fast_cast).
    ctx.register_udf(crate::fast_cast::udf());
    ctx.register_udf(crate::fast_cast::date_udf());
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

/// A format compiled once per batch: chrono's items, and when the format
/// is only fixed-width numbers and literals (`%Y-%m-%d %H:%M:%S`,
/// `%d/%m/%Y`, ...), a direct reader for values written at full width.
pub struct Format {
    items: Vec<Item<'static>>,
    fixed: Option<Fixed>,
    /// For a format the direct reader reads: the bytes its literal text
    /// holds that chrono can match with nothing but themselves, and how
    /// many times. A value with fewer cannot match, so chrono need not
    /// try it (half the example's timestamps are in its second format).
    required: Vec<(u8, usize)>,
}

impl Format {
    /// True when chrono cannot read `value` in this format. In a format of
    /// numbers and literals only, chrono matches every literal byte with
    /// the same byte of the value; its numbers take only digits, signs and
    /// white space, and its spaces white space. So each literal byte that
    /// is none of those must occur in the value at least as often as in
    /// the format.
    fn cannot_match(&self, value: &str) -> bool {
        self.required
            .iter()
            .any(|&(c, n)| value.bytes().filter(|&b| b == c).count() < n)
    }
}

/// The bytes of a format's literals chrono can match only with themselves.
fn required_bytes(items: &[Item<'_>]) -> Vec<(u8, usize)> {
    let mut counts: Vec<(u8, usize)> = Vec::new();
    for item in items {
        let text = match item {
            Item::Literal(t) => *t,
            Item::OwnedLiteral(t) => t,
            _ => continue,
        };
        for b in text.bytes() {
            if !b.is_ascii()
                || b.is_ascii_whitespace()
                || b.is_ascii_digit()
                || b == b'+'
                || b == b'-'
            {
                continue;
            }
            match counts.iter_mut().find(|(c, _)| *c == b) {
                Some((_, n)) => *n += 1,
                None => counts.push((b, 1)),
            }
        }
    }
    counts
}

/// Reads values of a format made of `%Y` (four digits), `%m %d %H %M %S`
/// (two digits) and literal bytes, without chrono. It accepts a subset of
/// what chrono accepts for the same format (no signs, no short numbers, no
/// extra spaces), with the same result; anything else goes to chrono. At
/// 10M rows of the example, chrono's parser was 5% of silver's CPU.
#[derive(Debug)]
struct Fixed {
    tokens: Vec<Token>,
    /// The format has an hour and a minute (and maybe seconds); without
    /// them it is a date alone.
    time: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Byte(u8),
}

impl Fixed {
    fn compile(items: &[Item<'_>]) -> Option<Fixed> {
        use chrono::format::{Numeric, Pad};
        let mut tokens = Vec::new();
        let literal = |tokens: &mut Vec<Token>, text: &str| {
            text.is_ascii()
                .then(|| tokens.extend(text.bytes().map(Token::Byte)))
        };
        // chrono skips any run of white space at a space item, where this
        // reads exactly the format's spaces (a subset): white space right
        // after one could be read differently, so such formats stay chrono's.
        let mut after_space = false;
        for item in items {
            let starts_white = match item {
                Item::Literal(t) | Item::Space(t) => t.starts_with(char::is_whitespace),
                Item::OwnedLiteral(t) | Item::OwnedSpace(t) => t.starts_with(char::is_whitespace),
                _ => false,
            };
            if after_space && starts_white {
                return None;
            }
            after_space = matches!(item, Item::Space(_) | Item::OwnedSpace(_));
            match item {
                Item::Numeric(n, Pad::Zero) => tokens.push(match n {
                    Numeric::Year => Token::Year,
                    Numeric::Month => Token::Month,
                    Numeric::Day => Token::Day,
                    Numeric::Hour => Token::Hour,
                    Numeric::Minute => Token::Minute,
                    Numeric::Second => Token::Second,
                    _ => return None,
                }),
                Item::Literal(text) => literal(&mut tokens, text)?,
                Item::OwnedLiteral(text) => literal(&mut tokens, text)?,
                Item::Space(text) => literal(&mut tokens, text)?,
                Item::OwnedSpace(text) => literal(&mut tokens, text)?,
                _ => return None,
            }
        }
        // Values are trimmed before parsing: a format that ends in white
        // space is chrono's.
        if after_space {
            return None;
        }
        let count = |t: Token| tokens.iter().filter(|&&x| x == t).count();
        let date = [Token::Year, Token::Month, Token::Day]
            .iter()
            .all(|&t| count(t) == 1);
        let (h, m, s) = (
            count(Token::Hour),
            count(Token::Minute),
            count(Token::Second),
        );
        let time = match (h, m, s) {
            (0, 0, 0) => false,
            (1, 1, 0 | 1) => true,
            _ => return None,
        };
        date.then_some(Fixed { tokens, time })
    }

    /// The date and time of `value`, or None when it is not written at
    /// full width in this format (chrono then decides).
    fn read(&self, value: &str) -> Option<chrono::NaiveDateTime> {
        let mut b = value.as_bytes();
        let (mut y, mut mo, mut d, mut h, mut mi, mut s) = (0, 0, 0, 0, 0, 0);
        fn digits(b: &mut &[u8], n: usize) -> Option<u32> {
            let (head, rest) = (b.get(..n)?, &b[n..]);
            let mut v = 0u32;
            for &c in head {
                if !c.is_ascii_digit() {
                    return None;
                }
                v = v * 10 + u32::from(c - b'0');
            }
            *b = rest;
            Some(v)
        }
        for t in &self.tokens {
            match *t {
                Token::Year => y = digits(&mut b, 4)?,
                Token::Month => mo = digits(&mut b, 2)?,
                Token::Day => d = digits(&mut b, 2)?,
                Token::Hour => h = digits(&mut b, 2)?,
                Token::Minute => mi = digits(&mut b, 2)?,
                Token::Second => s = digits(&mut b, 2)?,
                Token::Byte(c) => {
                    if b.first() != Some(&c) {
                        return None;
                    }
                    b = &b[1..];
                }
            }
        }
        if !b.is_empty() {
            return None;
        }
        let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, mo, d)?;
        let time = if self.time {
            // A leap second (60) is chrono's to read.
            chrono::NaiveTime::from_hms_opt(h, mi, s)?
        } else {
            chrono::NaiveTime::MIN
        };
        Some(date.and_time(time))
    }
}

/// Parses `value` with the first of `formats` that matches it whole:
/// microseconds since the epoch, UTC. A date-only format gives midnight.
pub fn parse_with(value: &str, formats: &[Format]) -> Option<i64> {
    let value = value.trim();
    for format in formats {
        if let Some(dt) = format.fixed.as_ref().and_then(|f| f.read(value)) {
            return Some(dt.and_utc().timestamp_micros());
        }
        if format.cannot_match(value) {
            continue;
        }
        let mut parsed = Parsed::new();
        if parse(&mut parsed, value, format.items.iter()).is_err() {
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
pub fn parse_date_with(value: &str, formats: &[Format]) -> Option<i32> {
    let value = value.trim();
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    for format in formats {
        if let Some(dt) = format.fixed.as_ref().and_then(|f| f.read(value)) {
            return i32::try_from((dt.date() - epoch).num_days()).ok();
        }
        if format.cannot_match(value) {
            continue;
        }
        let mut parsed = Parsed::new();
        if parse(&mut parsed, value, format.items.iter()).is_err() {
            continue;
        }
        // A format with a time of day must hold a valid one too.
        let time_ok = (parsed.hour_div_12.is_none() && parsed.hour_mod_12.is_none())
            || parsed.to_naive_time().is_ok();
        if let (true, Ok(d)) = (time_ok, parsed.to_naive_date()) {
            return i32::try_from((d - epoch).num_days()).ok();
        }
    }
    None
}

fn compile(function: &str, format: &str) -> Result<Format> {
    let items: Vec<Item<'static>> = StrftimeItems::new(format).parse_to_owned().map_err(|e| {
        datafusion::error::DataFusionError::Execution(format!(
            "{function}: bad format `{format}`: {e}"
        ))
    })?;
    let fixed = Fixed::compile(&items);
    // Only a format of numbers and literals is known to match that way.
    let required = match fixed {
        Some(_) => required_bytes(&items),
        None => Vec::new(),
    };
    Ok(Format {
        items,
        fixed,
        required,
    })
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

    /// The direct reader agrees with chrono on every value, for formats it
    /// reads and values it takes or leaves: full-width values, short
    /// numbers, signs, extra or missing spaces, impossible dates and times,
    /// leap seconds, trailing text, and random edits of valid values.
    #[test]
    fn the_direct_reader_agrees_with_chrono() {
        let formats = [
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%d %H:%M:%S",
            "%d/%m/%Y %H:%M",
            "%d/%m/%Y",
            "%Y%m%d",
            "%m/%d/%Y",
            "%Y-%m-%d  %H:%M",
            "%d.%m.%Y %H:%M:%S",
        ];
        let mut seeds: Vec<String> = vec![
            "2024-03-01T10:20:30",
            "2024-03-01 10:20:30",
            "01/03/2024 10:20",
            "01/03/2024",
            "20240301",
            "03/01/2024",
            "2024-03-01  10:20",
            "01.03.2024 10:20:30",
            "2024-02-29 23:59:59",
            "2023-02-29 10:00:00",
            "2024-02-30T00:00:00",
            "2024-13-01 00:00:00",
            "2024-03-01 24:00:00",
            "2024-03-01 10:60:00",
            "2024-12-31 23:59:60",
            "+2024-03-01 10:20:30",
            "-2024-03-01 10:20:30",
            "2024-3-1 1:2:3",
            "2024-03-01 10:20",
            "2024-03-01 10:20:30Z",
            "1/3/2024",
            "31/04/2024",
            "0000-01-01 00:00:00",
            "9999-12-31 23:59:59",
            "2024-03-01 10:20:3",
            "2024-03-0110:20:30",
            "2024-03-01   10:20:30",
            "20240301 ",
            " 2024-03-01 10:20:30",
            "",
            " ",
            "yesterday",
            "٢٠٢٤-03-01 10:20:30",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        // Random edits of the valid ones: a byte changed, dropped or doubled.
        let alphabet = b"0123456789 -/:.T+Z";
        let mut rng = crate::testing::Rng::new(0x2545_f491_4f6c_dd1d);
        let mut next = |n: usize| rng.below(n as u64) as usize;
        let valid: Vec<String> = seeds.iter().take(8).cloned().collect();
        for _ in 0..4000 {
            let mut v: Vec<u8> = valid[next(valid.len())].clone().into_bytes();
            let at = next(v.len());
            match next(3) {
                0 => v[at] = alphabet[next(alphabet.len())],
                1 => {
                    v.remove(at);
                }
                _ => v.insert(at, v[at]),
            }
            seeds.push(String::from_utf8(v).unwrap());
        }
        let mut direct = 0;
        let mut skipped = 0;
        for f in formats {
            let fast = compile("t", f).unwrap();
            assert!(fast.fixed.is_some(), "{f} is read directly");
            let slow = Format {
                items: fast.items.clone(),
                fixed: None,
                required: Vec::new(),
            };
            let (fast, slow) = ([fast], [slow]);
            for v in &seeds {
                assert_eq!(parse_with(v, &fast), parse_with(v, &slow), "{f}: {v:?}");
                assert_eq!(
                    parse_date_with(v, &fast),
                    parse_date_with(v, &slow),
                    "{f}: {v:?}"
                );
                direct += usize::from(fast[0].fixed.as_ref().unwrap().read(v.trim()).is_some());
                skipped += usize::from(fast[0].cannot_match(v.trim()));
            }
        }
        // The direct reader did take values, not only leave them to chrono,
        // and chrono was spared values it cannot read.
        assert!(direct > 500, "{direct}");
        assert!(skipped > 5000, "{skipped}");
        // Formats it does not read stay chrono's.
        for f in [
            "%e/%m/%Y",
            "%b %d %Y",
            "%Y-%m-%d %H",
            "%Y-%m-%d %z",
            "%s",
            "%d/%m/%Y ",
        ] {
            assert!(compile("t", f).unwrap().fixed.is_none(), "{f}");
        }
    }

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
