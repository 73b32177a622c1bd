//! Rewrites of the catalog queries BI tools and drivers send that Postgres
//! plans and DataFusion does not, applied to the parsed statement before it
//! is planned. Each rule is narrow: it touches only subqueries over
//! `pg_catalog`/`information_schema` tables, so a user's own query over lake
//! tables is never changed behind their back.
//!
//! - A correlated scalar subquery that is not an aggregate (SQLAlchemy's
//!   column reflection: `(SELECT pg_get_expr(d.adbin, …) FROM pg_attrdef d
//!   WHERE d.adrelid = a.attrelid …)`): Postgres checks at run time that it
//!   returns at most one row; DataFusion refuses to plan it. Wrapped in
//!   `max(…)`, it plans, and gives the same value whenever Postgres would
//!   give one (zero or one row).
//! - `(expression).field`, Postgres's access to a field of a composite
//!   (pgjdbc: `(information_schema._pg_expandarray(i.indkey)).n`), becomes
//!   `(expression)['field']`, the form DataFusion plans.
//! - `pg_type`'s function columns (`typinput`, `typreceive`, …) hold the
//!   function's name, as Postgres prints a `regproc`; Postgres also compares
//!   them as OIDs. `typreceive != 0` (the ADBC Postgres driver) becomes
//!   `typreceive != '-'` (Postgres prints OID 0 as `-`), and
//!   `typinput = 'pg_catalog.array_in'::regproc` (pgjdbc), which
//!   datafusion-postgres turns into an OID lookup in `pg_proc`, becomes
//!   `typinput = 'array_in'`.
//! - `array(SELECT … FROM unnest(t.reloptions) …)` (psql's `\d+`) is a NULL
//!   `text[]`: `reloptions` is always NULL here (see `catalog.rs`), and
//!   DataFusion has no `array(subquery)`.
//! - `information_schema.columns` reads as Postgres's: `data_type` in
//!   Postgres's names (`bigint`, `numeric`, `text`, `timestamp with time
//!   zone`) rather than Arrow's (`Int64`, `Decimal128(18, 2)`,
//!   `Dictionary(UInt16, Utf8)`), `ordinal_position` from 1.
//! - A scalar subquery reading a catalog table this server keeps empty
//!   ([`EMPTY_TABLES`]: no defaults, sequences, indexes, triggers or
//!   inheritance exist in a lake) is `NULL`, which is what it returns; the
//!   correlated forms of these (SQLAlchemy's identity and default columns)
//!   are ones DataFusion cannot decorrelate.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, ObjectName, Query, SelectItem, SetExpr, Statement, TableFactor, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// The statement with the rules applied, or `None` when no rule applies.
pub fn rewrite(statement: &Statement, resolution: Option<&Resolution>) -> Option<Statement> {
    let mut s = statement.clone();
    let mut rules = Rules {
        changed: false,
        pg_type: reads_pg_type(statement),
        resolution,
        ctes: cte_names(statement),
    };
    let _ = s.visit(&mut rules);
    rules.changed.then_some(s)
}

/// Where a connection's unqualified table names resolve (`SET search_path`):
/// the first schema of `search_path` that has the table. Postgres's
/// `current_schema()` is the first schema.
pub struct Resolution<'a> {
    pub search_path: &'a [String],
    pub exists: &'a (dyn Fn(&str, &str) -> bool + Send + Sync),
}

fn cte_names(statement: &Statement) -> Vec<String> {
    use datafusion::sql::sqlparser::ast::{Visit, Visitor};
    struct Ctes(Vec<String>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                for cte in &with.cte_tables {
                    self.0.push(cte.alias.name.value.to_ascii_lowercase());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut c = Ctes(vec![]);
    let _ = statement.visit(&mut c);
    c.0
}

struct Rules<'a> {
    changed: bool,
    /// The statement reads `pg_type`: its regproc columns may be compared.
    pg_type: bool,
    resolution: Option<&'a Resolution<'a>>,
    /// Names the statement's `WITH` clauses define (never lake tables).
    ctes: Vec<String>,
}

/// Catalog tables that are empty on this server (checked by
/// `tests/it/serve.rs`).
pub const EMPTY_TABLES: &[&str] = &[
    "pg_attrdef",
    "pg_sequence",
    "pg_index",
    "pg_trigger",
    "pg_inherits",
    "pg_statistic_ext",
    "pg_constraint",
];

/// `pg_type`'s `regproc` columns.
const REGPROC: &[&str] = &[
    "typinput",
    "typoutput",
    "typreceive",
    "typsend",
    "typmodin",
    "typmodout",
    "typanalyze",
];

fn is_regproc_column(e: &Expr) -> bool {
    let name = match e {
        Expr::Identifier(i) => &i.value,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => &i.value,
            None => return false,
        },
        _ => return false,
    };
    REGPROC.contains(&name.to_ascii_lowercase().as_str())
}

/// `'name'` for `(SELECT oid FROM pg_catalog.pg_proc WHERE proname = 'pg_catalog.name')`.
fn proc_name_lookup(e: &Expr) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, Value};
    let Expr::Subquery(q) = e else { return None };
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    let reads_pg_proc = s.from.len() == 1
        && matches!(&s.from[0].relation, TableFactor::Table { name, .. }
            if name.0.last().is_some_and(|p| p.to_string().eq_ignore_ascii_case("pg_proc")));
    if !reads_pg_proc {
        return None;
    }
    match s.selection.as_ref()? {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } if matches!(left.as_ref(), Expr::Identifier(i) if i.value.eq_ignore_ascii_case("proname")) => {
            match right.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(n) => {
                        Some(n.strip_prefix("pg_catalog.").unwrap_or(n).to_string())
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

/// The regproc comparison rules, on one comparison.
fn regproc_comparison(expr: &mut Expr) -> bool {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, Value};
    let Expr::BinaryOp { left, op, right } = expr else {
        return false;
    };
    if !matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq) {
        return false;
    }
    let replacement = |column: &Expr, other: &Expr| -> Option<Expr> {
        if !is_regproc_column(column) {
            return None;
        }
        let zero =
            matches!(other, Expr::Value(v) if matches!(&v.value, Value::Number(n, _) if n == "0"));
        let name = if zero {
            "-".to_string()
        } else {
            proc_name_lookup(other)?
        };
        Some(Expr::Value(Value::SingleQuotedString(name).into()))
    };
    if let Some(r) = replacement(left, right) {
        **right = r;
        return true;
    }
    if let Some(l) = replacement(right, left) {
        **left = l;
        return true;
    }
    false
}

/// Whether the statement reads `pg_type`.
fn reads_pg_type(statement: &Statement) -> bool {
    use datafusion::sql::sqlparser::ast::{Visit, Visitor};
    struct Finder(bool);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
            if name
                .0
                .last()
                .is_some_and(|p| p.to_string().eq_ignore_ascii_case("pg_type"))
            {
                self.0 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = Finder(false);
    let _ = statement.visit(&mut f);
    f.0
}

const AGGREGATES: &[&str] = &[
    "count",
    "max",
    "min",
    "sum",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "first_value",
    "last_value",
    "json_agg",
    "jsonb_agg",
];

fn is_catalog_table(name: &ObjectName) -> bool {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.to_string().trim_matches('"').to_ascii_lowercase())
        .collect();
    match parts.as_slice() {
        [table] => table.starts_with("pg_"),
        [.., schema, _] => schema == "pg_catalog" || schema == "information_schema",
        [] => false,
    }
}

fn only_catalog_tables(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let factors = select
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)));
    let mut any = false;
    for f in factors {
        match f {
            TableFactor::Table { name, .. } if is_catalog_table(name) => any = true,
            _ => return false,
        }
    }
    any
}

/// Whether the subquery's rows come from a join in which an always-empty
/// catalog table takes part (its first table, or one inner-joined).
fn reads_empty_table(query: &Query) -> bool {
    use datafusion::sql::sqlparser::ast::JoinOperator;
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    if !only_catalog_tables(query) || select.from.len() != 1 {
        return false;
    }
    let empty = |f: &TableFactor| match f {
        TableFactor::Table { name, .. } => name.0.last().is_some_and(|p| {
            EMPTY_TABLES.contains(
                &p.to_string()
                    .trim_matches('"')
                    .to_ascii_lowercase()
                    .as_str(),
            )
        }),
        _ => false,
    };
    let from = &select.from[0];
    empty(&from.relation)
        || from.joins.iter().any(|j| {
            matches!(
                j.join_operator,
                JoinOperator::Inner(_) | JoinOperator::Join(_)
            ) && empty(&j.relation)
        })
}

fn is_aggregate(expr: &Expr) -> bool {
    match expr {
        Expr::Function(f) => {
            let name = f
                .name
                .0
                .last()
                .map(|p| p.to_string().to_ascii_lowercase())
                .unwrap_or_default();
            AGGREGATES.contains(&name.as_str())
        }
        Expr::Nested(e) | Expr::Cast { expr: e, .. } => is_aggregate(e),
        _ => false,
    }
}

fn wrapped_in_max(expr: &Expr) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&format!("max({expr})"))
        .ok()?
        .parse_expr()
        .ok()
}

/// `NULL`, in a form that still names every bound parameter the subquery
/// named (with its cast), so that parameter numbers and types stay as the
/// client sent them: `CASE WHEN $2::VARCHAR IS NULL AND … AND FALSE THEN NULL END`.
fn null_keeping_parameters(query: &Query) -> Expr {
    use datafusion::sql::sqlparser::ast::{Value, Visit, Visitor};
    struct Params(Vec<String>, Vec<String>);
    impl Visitor for Params {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Cast { expr, .. } => {
                    if let Expr::Value(v) = expr.as_ref() {
                        if let Value::Placeholder(p) = &v.value {
                            self.0.push(e.to_string());
                            self.1.push(p.clone());
                        }
                    }
                }
                Expr::Value(v) => {
                    if let Value::Placeholder(p) = &v.value {
                        if !self.1.contains(p) {
                            self.0.push(p.clone());
                            self.1.push(p.clone());
                        }
                    }
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let null = Expr::Value(Value::Null.into());
    let mut params = Params(vec![], vec![]);
    let _ = query.visit(&mut params);
    if params.0.is_empty() {
        return null;
    }
    let conditions: Vec<String> = params.0.iter().map(|p| format!("({p}) IS NULL")).collect();
    let sql = format!(
        "CASE WHEN {} AND FALSE THEN NULL END",
        conditions.join(" AND ")
    );
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_expr())
        .unwrap_or(null)
}

/// Wraps the one output of a catalog scalar subquery in `max(…)`.
fn aggregate_scalar_subquery(query: &mut Query) -> bool {
    if query.limit_clause.is_some() || query.fetch.is_some() || !only_catalog_tables(query) {
        return false;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return false;
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped || select.having.is_some() || select.projection.len() != 1 {
        return false;
    }
    let expr = match &mut select.projection[0] {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return false,
    };
    if is_aggregate(expr) {
        return false;
    }
    match wrapped_in_max(expr) {
        Some(wrapped) => {
            *expr = wrapped;
            true
        }
        None => false,
    }
}

/// `information_schema.columns` as Postgres shows it (see the module doc).
const PG_COLUMNS: &str = "SELECT table_catalog, table_schema, table_name, column_name, \
     ordinal_position + 1 AS ordinal_position, column_default, is_nullable, \
     lakehouse_pg_type_name(data_type) AS data_type, character_maximum_length, \
     character_octet_length, numeric_precision, numeric_precision_radix, numeric_scale, \
     datetime_precision, interval_type, lakehouse_pg_udt_name(data_type) AS udt_name \
     FROM information_schema.columns";

fn is_information_schema_columns(name: &ObjectName) -> bool {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.to_string().trim_matches('"').to_ascii_lowercase())
        .collect();
    matches!(parts.as_slice(), [.., schema, table] if schema == "information_schema" && table == "columns")
}

impl VisitorMut for Rules<'_> {
    type Break = ();

    // After the children: the derived table put in is not visited again.
    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        use datafusion::sql::sqlparser::ast::{Ident, TableAlias};
        let TableFactor::Table { name, alias, .. } = factor else {
            return ControlFlow::Continue(());
        };
        if !is_information_schema_columns(name) {
            return ControlFlow::Continue(());
        }
        let Ok(Statement::Query(subquery)) = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(PG_COLUMNS)
            .and_then(|mut p| p.parse_statement())
        else {
            return ControlFlow::Continue(());
        };
        let alias = alias.clone().unwrap_or(TableAlias {
            explicit: true,
            name: Ident::new("columns"),
            columns: vec![],
            at: None,
        });
        *factor = TableFactor::Derived {
            lateral: false,
            subquery,
            alias: Some(alias),
            sample: None,
        };
        self.changed = true;
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &mut ObjectName) -> ControlFlow<()> {
        let Some(r) = self.resolution else {
            return ControlFlow::Continue(());
        };
        if name.0.len() != 1 {
            return ControlFlow::Continue(());
        }
        let Some(table) = name.0[0].as_ident().map(|i| i.value.clone()) else {
            return ControlFlow::Continue(());
        };
        if table.starts_with("pg_") || self.ctes.contains(&table.to_ascii_lowercase()) {
            return ControlFlow::Continue(());
        }
        if let Some(schema) = r.search_path.iter().find(|s| (r.exists)(s, &table)) {
            use datafusion::sql::sqlparser::ast::{Ident, ObjectNamePart};
            name.0
                .insert(0, ObjectNamePart::Identifier(Ident::new(schema.clone())));
            self.changed = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let (Some(r), Expr::Function(f)) = (self.resolution, &*expr) {
            let name = f.name.0.last().map(|p| p.to_string().to_ascii_lowercase());
            if name.as_deref() == Some("current_schema") {
                if let Some(first) = r.search_path.first() {
                    use datafusion::sql::sqlparser::ast::Value;
                    *expr = Expr::Value(Value::SingleQuotedString(first.clone()).into());
                    self.changed = true;
                    return ControlFlow::Continue(());
                }
            }
        }
        if let Expr::Function(f) = expr {
            use datafusion::sql::sqlparser::ast::FunctionArguments;
            let is_array = f
                .name
                .0
                .last()
                .is_some_and(|p| p.to_string().eq_ignore_ascii_case("array"));
            if let (true, FunctionArguments::Subquery(q)) = (is_array, &f.args) {
                let text = q.to_string().to_ascii_lowercase();
                if text.contains("unnest(") && text.contains("reloptions") {
                    if let Ok(null) = Parser::new(&PostgreSqlDialect {})
                        .try_with_sql("CAST(NULL AS TEXT[])")
                        .and_then(|mut p| p.parse_expr())
                    {
                        *expr = null;
                        self.changed = true;
                        return ControlFlow::Continue(());
                    }
                }
            }
        }
        if self.pg_type && regproc_comparison(expr) {
            self.changed = true;
        }
        if let Expr::CompoundFieldAccess { root, access_chain } = expr {
            use datafusion::sql::sqlparser::ast::{AccessExpr, Subscript, Value};
            // `t.col[1]` (a column path) is DataFusion's already; only a
            // computed composite needs the subscript form.
            let computed = !matches!(
                root.as_ref(),
                Expr::Identifier(_) | Expr::CompoundIdentifier(_)
            );
            for access in access_chain.iter_mut().filter(|_| computed) {
                if let AccessExpr::Dot(Expr::Identifier(field)) = access {
                    let key = Expr::Value(Value::SingleQuotedString(field.value.clone()).into());
                    *access = AccessExpr::Subscript(Subscript::Index { index: key });
                    self.changed = true;
                }
            }
        }
        if let Expr::Subquery(query) = expr {
            if reads_empty_table(query) {
                *expr = null_keeping_parameters(query);
                self.changed = true;
            } else if aggregate_scalar_subquery(query) {
                self.changed = true;
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn catalog_scalar_subqueries_are_aggregated() {
        let s = one(
            "SELECT a.attname, (SELECT t.typcollation FROM pg_catalog.pg_type t \
             WHERE t.oid = a.atttypid) AS coll FROM pg_catalog.pg_attribute a",
        );
        let r = rewrite(&s, None).expect("rewritten").to_string();
        assert!(
            r.contains("(SELECT max(t.typcollation) FROM pg_catalog.pg_type t WHERE"),
            "{r}"
        );
    }

    #[test]
    fn subqueries_over_always_empty_catalog_tables_are_null() {
        let s = one(
            "SELECT CASE WHEN a.atthasdef THEN (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid)              FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) ELSE NULL END FROM pg_catalog.pg_attribute a",
        );
        let r = rewrite(&s, None).expect("rewritten").to_string();
        assert!(r.contains("THEN NULL ELSE NULL"), "{r}");
        // Bound parameters inside keep their numbers and casts.
        let s = one(
            "SELECT $1::INT, CASE WHEN a.attidentity != $2::VARCHAR THEN (SELECT json_build_object($3::VARCHAR, s.seqstart)              FROM pg_catalog.pg_sequence s WHERE a.attidentity != $4) ELSE NULL END, $5::VARCHAR FROM pg_catalog.pg_attribute a",
        );
        let r = rewrite(&s, None).expect("rewritten").to_string();
        assert!(
            r.contains("THEN CASE WHEN ($3::VARCHAR) IS NULL AND ($4) IS NULL AND false THEN NULL END ELSE NULL END"),
            "{r}"
        );
    }

    #[test]
    fn composite_field_access_becomes_a_subscript() {
        let s = one(
            "SELECT (information_schema._pg_expandarray(i.indkey)).n FROM pg_catalog.pg_index i",
        );
        let r = rewrite(&s, None).expect("rewritten").to_string();
        assert!(
            r.contains("(information_schema._pg_expandarray(i.indkey))['n']"),
            "{r}"
        );
        let path = one("SELECT tmp.i_indoption[tmp.ordinal_position - 1] FROM t AS tmp");
        assert!(rewrite(&path, None).is_none());
    }

    #[test]
    fn regproc_columns_compare_as_postgres_compares_them() {
        let s = one(
            "SELECT oid FROM pg_catalog.pg_type WHERE (typreceive != 0 OR typsend != 0) AND typtype != 'r'",
        );
        let r = rewrite(&s, None).expect("rewritten").to_string();
        assert!(r.contains("(typreceive <> '-' OR typsend <> '-')"), "{r}");
        let s = one(
            "SELECT typinput = (SELECT oid FROM pg_catalog.pg_proc WHERE proname = 'pg_catalog.array_in') AS is_array FROM pg_catalog.pg_type",
        );
        let r = rewrite(&s, None).expect("rewritten").to_string();
        assert!(r.contains("typinput = 'array_in' AS is_array"), "{r}");
        // The same column names elsewhere are left alone.
        assert!(rewrite(&one("SELECT * FROM gold.t WHERE typreceive != 0"), None).is_none());
    }

    #[test]
    fn psql_reloptions_arrays_are_null() {
        let s = one(
            "SELECT pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ') \
             FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_class tc ON (c.reltoastrelid = tc.oid)",
        );
        let r = rewrite(&s, None).expect("rewritten").to_string();
        assert!(r.contains("c.reloptions || CAST(NULL AS TEXT[])"), "{r}");
    }

    #[test]
    fn unqualified_tables_resolve_along_the_search_path() {
        let path = vec!["silver".to_string(), "gold".to_string()];
        let exists = |schema: &str, table: &str| {
            matches!(
                (schema, table),
                ("silver", "orders")
                    | ("gold", "daily_region_sales")
                    | ("silver", "daily_region_sales")
            )
        };
        let r = Resolution {
            search_path: &path,
            exists: &exists,
        };
        let s = one(
            "WITH orders AS (SELECT 1) SELECT current_schema(), * FROM daily_region_sales d \
             JOIN gold.category_daily c ON true JOIN orders ON true JOIN pg_class ON true JOIN nowhere ON true",
        );
        let out = rewrite(&s, Some(&r)).expect("rewritten").to_string();
        assert!(
            out.contains("SELECT 'silver', * FROM silver.daily_region_sales d"),
            "{out}"
        );
        assert!(out.contains("JOIN gold.category_daily"), "{out}");
        assert!(out.contains("JOIN orders ON"), "{out}");
        assert!(out.contains("JOIN pg_class ON"), "{out}");
        assert!(out.contains("JOIN nowhere ON"), "{out}");
    }

    #[test]
    fn information_schema_columns_reads_as_postgres() {
        let s = one(
            "SELECT column_name, data_type FROM information_schema.columns c WHERE c.table_name = 't'",
        );
        let r = rewrite(&s, None).expect("rewritten").to_string();
        assert!(
            r.contains("lakehouse_pg_type_name(data_type) AS data_type"),
            "{r}"
        );
        assert!(
            r.contains("FROM information_schema.columns) c WHERE"),
            "{r}"
        );
    }

    #[test]
    fn queries_over_lake_tables_and_aggregates_are_left_alone() {
        for sql in [
            "SELECT (SELECT region FROM gold.daily_region_sales s WHERE s.orders = t.orders) FROM gold.t t",
            "SELECT (SELECT count(*) FROM pg_catalog.pg_class c WHERE c.oid = a.attrelid) FROM pg_catalog.pg_attribute a",
            "SELECT (SELECT relname FROM pg_catalog.pg_class LIMIT 1)",
            "SELECT 1",
        ] {
            assert!(rewrite(&one(sql), None).is_none(), "{sql}");
        }
    }
}
