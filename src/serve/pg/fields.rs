//! The row description Postgres clients see: column names and type
//! modifiers as Postgres gives them.
//!
//! - Names: an unaliased `sum(revenue)` is `sum` in Postgres (DataFusion says
//!   `sum(gold.daily_region_sales.revenue)`), a `CASE` is `case`, an
//!   expression is `?column?`. BI tools and pandas key results by these.
//! - Type modifiers: a `numeric(18,2)` column carries its precision and scale
//!   (`((18 << 16) | 2) + 4`), so pgjdbc reports `numeric(18,2)` rather than
//!   `numeric(0,0)`, connectorx and pandas keep the scale.
//!
//! Used by the simple protocol (the guard answers queries itself) and by the
//! extended protocol's Describe, through [`PgParser`].

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{Expr, SelectItem, SetExpr, Statement};
use datafusion_postgres::pgwire;
use pgwire::api::portal::Format;
use pgwire::api::results::FieldInfo;
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, Type};
use pgwire::error::PgWireResult;

/// Postgres's type modifier of an Arrow type, `-1` when it has none.
pub fn type_modifier(data_type: &DataType) -> i32 {
    match data_type {
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s)
            if *s >= 0 =>
        {
            ((i32::from(*p) << 16) | i32::from(*s as u8)) + 4
        }
        _ => -1,
    }
}

/// The name Postgres gives an unaliased select item (its `FigureColname`).
fn figure_name(expr: &Expr) -> Option<String> {
    Some(match expr {
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(parts) => parts.last()?.value.clone(),
        Expr::Function(f) => f.name.0.last()?.as_ident()?.value.to_lowercase(),
        Expr::Nested(e) => return figure_name(e),
        Expr::Cast { expr, .. } => return figure_name(expr),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Array(_) => "array".into(),
        Expr::Extract { .. } => "extract".into(),
        Expr::Substring { .. } => "substring".into(),
        Expr::Trim { .. } => "btrim".into(),
        Expr::Position { .. } => "position".into(),
        Expr::Subquery(q) => {
            // A scalar subquery takes its one column's name.
            if let SetExpr::Select(s) = q.body.as_ref() {
                match s.projection.as_slice() {
                    [SelectItem::ExprWithAlias { alias, .. }] => alias.value.clone(),
                    [SelectItem::UnnamedExpr(e)] => return figure_name(e),
                    _ => return None,
                }
            } else {
                return None;
            }
        }
        _ => "?column?".into(),
    })
}

/// Postgres's names for the statement's output columns, where they differ
/// from DataFusion's; `None` when the columns cannot be matched to select
/// items one to one (a `*`, a set operation, not a query).
fn postgres_names(statement: &Statement, columns: usize) -> Option<Vec<Option<String>>> {
    let Statement::Query(q) = statement else {
        return None;
    };
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    if select.projection.len() != columns {
        return None;
    }
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => Some(figure_name(e)),
            SelectItem::ExprWithAlias { .. } => Some(None),
            _ => None,
        })
        .collect()
}

/// Fields with Postgres's names and type modifiers.
pub fn patch(
    fields: Vec<FieldInfo>,
    schema: &Schema,
    statement: Option<&Statement>,
) -> Vec<FieldInfo> {
    let names = statement.and_then(|s| postgres_names(s, fields.len()));
    fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let modifier = schema
                .fields()
                .get(i)
                .map_or(-1, |a| type_modifier(a.data_type()));
            let name = names
                .as_ref()
                .and_then(|n| n[i].clone())
                .unwrap_or_else(|| f.name().to_string());
            if modifier == f.type_modifier() && name == f.name() {
                return f;
            }
            FieldInfo::new(
                name,
                f.table_id(),
                f.column_id(),
                f.datatype().clone(),
                f.format(),
            )
            .with_format_options(f.format_options().clone())
            .with_type_size(f.type_size())
            .with_type_modifier(modifier)
        })
        .collect()
}

type DfStatement = (String, Option<(Statement, LogicalPlan)>);

/// datafusion-postgres's parser, with the result schema a Describe reports
/// patched by [`patch`].
pub struct PgParser {
    pub inner: Arc<datafusion_postgres::Parser>,
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        self.inner.parse_sql(client, sql, types).await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let fields = self.inner.get_result_schema(stmt, column_format)?;
        match stmt {
            (_, Some((statement, plan))) => {
                Ok(patch(fields, plan.schema().as_arrow(), Some(statement)))
            }
            _ => Ok(fields),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    #[test]
    fn numeric_modifiers_are_precision_and_scale() {
        assert_eq!(
            type_modifier(&DataType::Decimal128(18, 2)),
            (18 << 16 | 2) + 4
        );
        assert_eq!(
            type_modifier(&DataType::Decimal128(38, 10)),
            (38 << 16 | 10) + 4
        );
        assert_eq!(type_modifier(&DataType::Int64), -1);
        assert_eq!(type_modifier(&DataType::Utf8), -1);
    }

    #[test]
    fn unaliased_items_are_named_as_postgres_names_them() {
        let s = Parser::parse_sql(
            &PostgreSqlDialect {},
            "SELECT region, sum(revenue), count(*), revenue::int, CASE WHEN 1 = 1 THEN 1 END, 1 + 1, \
             max(orders) AS most, t.orders FROM gold.t t",
        )
        .unwrap()
        .remove(0);
        let names = postgres_names(&s, 8).unwrap();
        assert_eq!(
            names,
            [
                Some("region"),
                Some("sum"),
                Some("count"),
                Some("revenue"),
                Some("case"),
                Some("?column?"),
                None,
                Some("orders")
            ]
            .map(|n| n.map(String::from))
        );
        let star = Parser::parse_sql(&PostgreSqlDialect {}, "SELECT *, 1 FROM t")
            .unwrap()
            .remove(0);
        assert_eq!(postgres_names(&star, 5), None);
    }
}
