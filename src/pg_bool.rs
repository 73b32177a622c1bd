//! A string literal compared with a boolean is a boolean, as in Postgres:
//! `indisprimary = 'f'` (SQLAlchemy 1.4's index reflection), `active <> 'yes'`.
//! DataFusion refuses to compare Boolean with Utf8; this analyzer rule,
//! which runs before type coercion, turns the literal into `true`/`false`
//! when it is one of Postgres's boolean spellings and leaves anything else
//! for type coercion to refuse.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::DFSchema;
use datafusion::error::Result;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;
use datafusion::scalar::ScalarValue;

#[derive(Debug, Default)]
pub struct BooleanLiterals;

impl BooleanLiterals {
    pub fn new() -> Arc<Self> {
        Arc::new(Self)
    }
}

/// Postgres's spellings of a boolean (case-insensitive, trimmed).
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn string_literal(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

fn is_boolean(e: &Expr, schema: &DFSchema) -> bool {
    matches!(
        e.get_type(schema),
        Ok(datafusion::arrow::datatypes::DataType::Boolean)
    )
}

impl AnalyzerRule for BooleanLiterals {
    fn name(&self) -> &str {
        "lakehouse_boolean_literals"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let mut schema = DFSchema::empty();
            for input in plan.inputs() {
                schema.merge(input.schema());
            }
            plan.map_expressions(|e| {
                e.transform_up(|e| match e {
                    Expr::BinaryExpr(BinaryExpr { left, op, right })
                        if matches!(
                            op,
                            Operator::Eq
                                | Operator::NotEq
                                | Operator::IsDistinctFrom
                                | Operator::IsNotDistinctFrom
                        ) =>
                    {
                        let as_bool = |side: &Expr, other: &Expr| {
                            string_literal(side)
                                .and_then(parse_bool)
                                .filter(|_| is_boolean(other, &schema))
                        };
                        let (left, right) = match (as_bool(&left, &right), as_bool(&right, &left)) {
                            (Some(b), _) => (Box::new(datafusion::prelude::lit(b)), right),
                            (_, Some(b)) => (left, Box::new(datafusion::prelude::lit(b))),
                            _ => {
                                return Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                                    left,
                                    op,
                                    right,
                                })))
                            }
                        };
                        Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr {
                            left,
                            op,
                            right,
                        })))
                    }
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .map(|t| t.data)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bool;

    #[test]
    fn postgres_boolean_spellings() {
        for t in ["t", "TRUE", " yes ", "on", "1", "y"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["f", "False", "no", "OFF", "0", "n"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for neither in ["", "maybe", "2", "tru e"] {
            assert_eq!(parse_bool(neither), None, "{neither}");
        }
    }
}
