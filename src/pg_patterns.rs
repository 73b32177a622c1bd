//! Postgres date/time patterns in `to_char`, `to_date` and `to_timestamp`.
//!
//! DataFusion's functions take chrono's `%Y-%m-%d`; Postgres clients (Superset's
//! time filters, Metabase, hand-written BI SQL) send `YYYY-MM-DD HH24:MI:SS`.
//! Given a Postgres pattern, DataFusion echoed it back (`to_char(d, 'YYYY-MM')`
//! was the text `YYYY-MM` for every row) or failed to parse. Each of these
//! functions is registered here as a thin wrapper around DataFusion's own: a
//! constant pattern that holds no `%` is translated into the chrono format
//! with the same meaning when the function runs (constant folding included),
//! then DataFusion's function does the work. Patterns with a `%` are chrono
//! formats already and are left alone (pipelines use them). The wrapper keeps
//! the function's name and the query's column names unchanged.
//! Owns the translation; must not know about protocols.

use datafusion::error::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

use crate::functions::{Before, Wrapped};

/// Translates Postgres patterns among a function's arguments (all but the
/// first) before DataFusion's function runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PostgresPatterns;

/// Registers `to_char` (and its alias `date_format`), `to_date` and the
/// `to_timestamp*` family with Postgres patterns understood.
pub fn register(ctx: &SessionContext) {
    for name in [
        "to_char",
        "to_date",
        "to_timestamp",
        "to_timestamp_seconds",
        "to_timestamp_millis",
        "to_timestamp_micros",
        "to_timestamp_nanos",
    ] {
        // The session's own instance, configured for its settings.
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(Wrapped::udf(inner.as_ref(), PostgresPatterns));
        }
    }
}

fn translated(arg: &ColumnarValue) -> Option<ColumnarValue> {
    let ColumnarValue::Scalar(value) = arg else {
        return None;
    };
    let scalar = match value {
        ScalarValue::Utf8(Some(p)) => ScalarValue::Utf8(Some(translate(p)?)),
        ScalarValue::Utf8View(Some(p)) => ScalarValue::Utf8View(Some(translate(p)?)),
        ScalarValue::LargeUtf8(Some(p)) => ScalarValue::LargeUtf8(Some(translate(p)?)),
        _ => return None,
    };
    Some(ColumnarValue::Scalar(scalar))
}

impl Before for PostgresPatterns {
    fn before(&self, _name: &str, args: &mut ScalarFunctionArgs) -> Result<()> {
        for arg in args.args.iter_mut().skip(1) {
            if let Some(chrono) = translated(arg) {
                *arg = chrono;
            }
        }
        Ok(())
    }
}

/// (Postgres token, chrono format, chrono format in fill mode `FM`, matched
/// case-insensitively). Longer tokens come before their prefixes.
const TOKENS: &[(&str, &str, &str, bool)] = &[
    ("HH24", "%H", "%-H", true),
    ("HH12", "%I", "%-I", true),
    ("HH", "%I", "%-I", true),
    ("MI", "%M", "%-M", true),
    ("SS", "%S", "%-S", true),
    ("MS", "%3f", "%3f", true),
    ("US", "%6f", "%6f", true),
    ("IYYY", "%G", "%G", true),
    ("YYYY", "%Y", "%Y", true),
    ("YY", "%y", "%-y", true),
    ("MONTH", "%B", "%B", false),
    ("Month", "%B", "%B", false),
    ("month", "%B", "%B", false),
    ("MON", "%b", "%b", false),
    ("Mon", "%b", "%b", false),
    ("mon", "%b", "%b", false),
    ("MM", "%m", "%-m", true),
    ("DAY", "%A", "%A", false),
    ("Day", "%A", "%A", false),
    ("day", "%A", "%A", false),
    ("DDD", "%j", "%-j", true),
    ("DD", "%d", "%-d", true),
    ("DY", "%a", "%a", false),
    ("Dy", "%a", "%a", false),
    ("dy", "%a", "%a", false),
    ("IW", "%V", "%-V", true),
    ("AM", "%p", "%p", false),
    ("PM", "%p", "%p", false),
    ("am", "%P", "%P", false),
    ("pm", "%P", "%P", false),
    ("TZ", "%Z", "%Z", false),
    ("OF", "%:z", "%:z", false),
];

/// The chrono format for a Postgres pattern, or `None` when the text is not
/// one (it holds a `%`, or no Postgres token at all).
pub fn translate(pattern: &str) -> Option<String> {
    if pattern.contains('%') {
        return None;
    }
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut tokens = 0;
    let mut fill = false;
    let mut rest = pattern;
    'outer: while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            // Literal text in double quotes; `\"` is a quote inside it.
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            rest = &quoted[end.min(quoted.len())..];
            continue;
        }
        if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("FM") {
            fill = true;
            rest = &rest[2..];
            continue;
        }
        for (token, plain, filled, any_case) in TOKENS {
            let hit = rest.len() >= token.len()
                && rest.is_char_boundary(token.len())
                && if *any_case {
                    rest[..token.len()].eq_ignore_ascii_case(token)
                } else {
                    &rest[..token.len()] == *token
                };
            if hit {
                out.push_str(if fill { filled } else { plain });
                fill = false;
                tokens += 1;
                rest = &rest[token.len()..];
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    (tokens > 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn postgres_patterns_become_chrono_formats() {
        assert_eq!(translate("YYYY-MM").as_deref(), Some("%Y-%m"));
        assert_eq!(translate("YYYY-MM-DD").as_deref(), Some("%Y-%m-%d"));
        assert_eq!(
            translate("YYYY-MM-DD HH24:MI:SS.US").as_deref(),
            Some("%Y-%m-%d %H:%M:%S.%6f")
        );
        assert_eq!(translate("yyyy-mm-dd").as_deref(), Some("%Y-%m-%d"));
        assert_eq!(translate("DD/MM/YYYY").as_deref(), Some("%d/%m/%Y"));
        assert_eq!(translate("Mon YYYY").as_deref(), Some("%b %Y"));
        assert_eq!(translate("FMDD Month").as_deref(), Some("%-d %B"));
        assert_eq!(
            translate("YYYY\"Q\"MM HH12:MI AM").as_deref(),
            Some("%YQ%m %I:%M %p")
        );
        assert_eq!(translate("Day, DDD").as_deref(), Some("%A, %j"));
    }

    #[test]
    fn chrono_formats_and_plain_text_are_left_alone() {
        assert_eq!(translate("%Y-%m-%d"), None);
        assert_eq!(translate("%d/%m/%Y %H:%M"), None);
        assert_eq!(translate("-/: "), None);
        assert_eq!(translate(""), None);
    }
}
