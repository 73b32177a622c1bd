//! `pg_catalog` for a lake: datafusion-postgres's catalog tables and
//! functions, with the overrides and additions that BI tools, SQLAlchemy,
//! pandas and pgjdbc need to browse a lake (see [`CatalogOverrides`]), and
//! Postgres functions clients call on connect (`version()`,
//! `current_setting`, `pg_type_is_visible`, …).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;

use crate::catalog::CATALOG;
use crate::error::{Error, Result};

/// Adds `pg_catalog` (and the Postgres functions clients call) to the
/// engine's session, inside the `lakehouse` catalog.
pub async fn install_catalog(ctx: &SessionContext) -> Result<()> {
    setup_pg_catalog(ctx, CATALOG, EmptyContextProvider)
        .map_err(|e| Error::Internal(format!("cannot set up pg_catalog: {e}")))?;
    let setup = |e: DataFusionError| Error::Internal(format!("cannot set up pg_catalog: {e}"));
    if let Some(catalog) = ctx.catalog(CATALOG) {
        if let Some(inner) = catalog.schema("pg_catalog") {
            catalog
                .register_schema("pg_catalog", Arc::new(CatalogOverrides { inner }))
                .map_err(setup)?;
            ctx.register_udf(function_results(ctx).await.map_err(setup)?);
        }
    }
    // Drivers (SQLAlchemy, JDBC) parse `version()` for a Postgres version.
    let version = format!(
        "PostgreSQL 16.6 (lakehouse {} on Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "version",
        vec![],
        datafusion::arrow::datatypes::DataType::Utf8,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(move |_| {
            Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::Utf8(Some(version.clone())),
            ))
        }),
    ));
    ctx.register_udf(to_regtype());
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "pg_collation_is_visible",
        vec![datafusion::arrow::datatypes::DataType::Int64],
        datafusion::arrow::datatypes::DataType::Boolean,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(|_| {
            Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::Boolean(Some(true)),
            ))
        }),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        JsonBuildObject::new(),
    ));
    // No column of a lake table is backed by a sequence.
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "pg_get_serial_sequence",
        vec![
            datafusion::arrow::datatypes::DataType::Utf8,
            datafusion::arrow::datatypes::DataType::Utf8,
        ],
        datafusion::arrow::datatypes::DataType::Utf8,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(|_| {
            Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::Utf8(None),
            ))
        }),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        GenerateSubscripts::new(),
    ));
    ctx.register_udf(current_setting());
    ctx.register_udf(type_name_udf("lakehouse_pg_type_name", pg_type_name));
    ctx.register_udf(type_name_udf("lakehouse_pg_udt_name", pg_udt_name));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        ExpandArray::new(),
    ));
    // Every type lives in pg_catalog, which is always on the search path.
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "pg_type_is_visible",
        vec![datafusion::arrow::datatypes::DataType::Int64],
        datafusion::arrow::datatypes::DataType::Boolean,
        datafusion::logical_expr::Volatility::Stable,
        Arc::new(|args: &[datafusion::logical_expr::ColumnarValue]| {
            use datafusion::arrow::array::{Array, BooleanArray};
            let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(args)?;
            let out: BooleanArray = (0..arrays[0].len())
                .map(|i| (!arrays[0].is_null(i)).then_some(true))
                .collect();
            Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
                out,
            )))
        }),
    ));
    // Definitions of objects a lake never has (indexes, triggers, rules,
    // constraints, column comments): NULL, as Postgres answers for an OID
    // that is none.
    for name in [
        "col_description",
        "pg_get_indexdef",
        "pg_get_triggerdef",
        "pg_get_ruledef",
        "pg_get_constraintdef",
    ] {
        use datafusion::execution::FunctionRegistry;
        if ctx.udf(name).is_err() {
            ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
                NoDefinition::new(name),
            ));
        }
    }
    ctx.add_optimizer_rule(Arc::new(LikeEscape));
    Ok(())
}

/// datafusion-postgres's `pg_catalog`, with these tables replaced:
/// - `pg_authid` is empty: datafusion-postgres ships a fixed `postgres` row
///   with a SCRAM verifier; this server's one login lives in its own
///   settings, and no client may read even a stand-in secret.
/// - `pg_index` and `pg_constraint` are empty (lake tables have no indexes
///   or constraints; the shipped rows describe a real Postgres's own
///   catalogs, which do not exist here) and type their column-number and
///   operator lists (`indkey`, `conkey`, …) as arrays, as Postgres does, so
///   the reflection queries of SQLAlchemy and pgjdbc (`unnest(indkey)`,
///   `attnum = ANY(conkey)`, `_pg_expandarray`) plan.
/// - `pg_class` gains `reloptions` (always NULL here).
/// - `pg_settings` lists the settings `current_setting` knows.
#[derive(Debug)]
struct CatalogOverrides {
    inner: Arc<dyn datafusion::catalog::SchemaProvider>,
}

/// `pg_get_function_result(oid)`: the result type of a function in
/// `pg_proc` as Postgres writes it (`integer`, `SETOF record`); NULL for an
/// OID that is no function. pgjdbc's `getFunctions` reads it. The map is
/// built once: `pg_proc` is fixed.
async fn function_results(
    ctx: &SessionContext,
) -> datafusion::error::Result<datafusion::logical_expr::ScalarUDF> {
    use datafusion::arrow::array::{Array, AsArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    use datafusion::logical_expr::ColumnarValue;
    let batches = ctx
        .sql(&format!(
            "SELECT CAST(p.oid AS BIGINT), \
             CASE WHEN p.proretset THEN 'SETOF ' ELSE '' END || \
             coalesce(format_type(p.prorettype, NULL), 'unknown') \
             FROM {CATALOG}.pg_catalog.pg_proc p"
        ))
        .await?
        .collect()
        .await?;
    let mut results = std::collections::HashMap::new();
    for b in &batches {
        let oids = b.column(0).as_primitive::<Int64Type>();
        let text = datafusion::arrow::compute::cast(b.column(1), &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        for i in 0..b.num_rows() {
            if !oids.is_null(i) && !text.is_null(i) {
                results.insert(oids.value(i), text.value(i).to_string());
            }
        }
    }
    let results = Arc::new(results);
    Ok(datafusion::logical_expr::create_udf(
        "pg_get_function_result",
        vec![DataType::Int64],
        DataType::Utf8,
        datafusion::logical_expr::Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let oids = arrays[0].as_primitive::<Int64Type>();
            let out: StringArray = oids
                .iter()
                .map(|o| o.and_then(|o| results.get(&o).map(String::as_str)))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    ))
}

#[async_trait]
impl datafusion::catalog::SchemaProvider for CatalogOverrides {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::error::Result<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        let table = self.inner.table(name).await?;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        match table {
            Some(t) if name.eq_ignore_ascii_case("pg_settings") => {
                Ok(Some(Arc::new(pg_settings(t.schema())?)))
            }
            Some(t) if name.eq_ignore_ascii_case("pg_authid") => {
                let empty = datafusion::datasource::MemTable::try_new(t.schema(), vec![vec![]])?;
                Ok(Some(Arc::new(empty)))
            }
            Some(t)
                if name.eq_ignore_ascii_case("pg_index")
                    || name.eq_ignore_ascii_case("pg_constraint") =>
            {
                let fields: Vec<Field> =
                    t.schema()
                        .fields()
                        .iter()
                        .map(|f| {
                            let element = match f.name().as_str() {
                                "indkey" | "indoption" | "conkey" | "confkey"
                                | "confdelsetcols" => Some(DataType::Int16),
                                "indclass" | "indcollation" | "conpfeqop" | "conppeqop"
                                | "conffeqop" | "conexclop" => Some(DataType::Int32),
                                _ => None,
                            };
                            match element {
                                Some(e) => Field::new(f.name(), DataType::new_list(e, true), true),
                                None => f.as_ref().clone(),
                            }
                        })
                        .collect();
                let empty = datafusion::datasource::MemTable::try_new(
                    Arc::new(Schema::new(fields)),
                    vec![vec![]],
                )?;
                Ok(Some(Arc::new(empty)))
            }
            Some(t)
                if name.eq_ignore_ascii_case("pg_class")
                    && t.schema().index_of("reloptions").is_err() =>
            {
                // Storage options of a relation: none here. SQLAlchemy's
                // index reflection selects the column.
                use datafusion::logical_expr::{cast, lit, LogicalPlanBuilder};
                let columns: Vec<datafusion::logical_expr::Expr> = t
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| {
                        datafusion::prelude::col(datafusion::common::Column::from_name(f.name()))
                    })
                    .chain(std::iter::once(
                        cast(
                            lit(datafusion::scalar::ScalarValue::Null),
                            DataType::new_list(DataType::Utf8, true),
                        )
                        .alias("reloptions"),
                    ))
                    .collect();
                let plan = LogicalPlanBuilder::scan(
                    "pg_class",
                    datafusion::datasource::provider_as_source(t),
                    None,
                )?
                .project(columns)?
                .build()?;
                Ok(Some(Arc::new(datafusion::catalog::view::ViewTable::new(
                    plan, None,
                ))))
            }
            other => Ok(other),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// `LIKE pattern ESCAPE '/'` with a constant pattern becomes the same match
/// with DataFusion's backslash escape (SQLAlchemy reflection sends `ESCAPE '/'`).
#[derive(Debug)]
struct LikeEscape;

impl datafusion::optimizer::OptimizerRule for LikeEscape {
    fn name(&self) -> &str {
        "lakehouse_like_escape"
    }

    fn apply_order(&self) -> Option<datafusion::optimizer::ApplyOrder> {
        Some(datafusion::optimizer::ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn datafusion::optimizer::OptimizerConfig,
    ) -> datafusion::error::Result<datafusion::common::tree_node::Transformed<LogicalPlan>> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::logical_expr::Expr;
        use datafusion::scalar::ScalarValue;
        plan.map_expressions(|e| {
            e.transform(|e| match e {
                Expr::Like(mut like) if like.escape_char.is_some_and(|c| c != '\\') => {
                    let escape = like.escape_char.unwrap_or('\\');
                    match like.pattern.as_ref() {
                        Expr::Literal(ScalarValue::Utf8(Some(p)), _)
                        | Expr::Literal(ScalarValue::LargeUtf8(Some(p)), _)
                        | Expr::Literal(ScalarValue::Utf8View(Some(p)), _) => {
                            let mut out = String::with_capacity(p.len());
                            let mut chars = p.chars();
                            while let Some(ch) = chars.next() {
                                if ch == escape {
                                    out.push('\\');
                                    if let Some(next) = chars.next() {
                                        out.push(next);
                                    }
                                } else if ch == '\\' {
                                    out.push_str("\\\\");
                                } else {
                                    out.push(ch);
                                }
                            }
                            like.pattern =
                                Box::new(Expr::Literal(ScalarValue::Utf8(Some(out)), None));
                            like.escape_char = None;
                            Ok(Transformed::yes(Expr::Like(like)))
                        }
                        _ => Ok(Transformed::no(Expr::Like(like))),
                    }
                }
                other => Ok(Transformed::no(other)),
            })
        })
    }
}

/// `json_build_object(k1, v1, k2, v2, ...)` as JSON text (SQLAlchemy's
/// column reflection builds identity-column details with it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: datafusion::logical_expr::Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        Self {
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _args: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::StringBuilder;
        use datafusion::scalar::ScalarValue;
        if args.args.len() % 2 != 0 {
            return Err(DataFusionError::Plan(
                "json_build_object takes key/value pairs".into(),
            ));
        }
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::new();
        for row in 0..args.number_rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                let json = if value.is_null() {
                    serde_json::Value::Null
                } else {
                    match &value {
                        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(*b),
                        v if v.data_type().is_numeric() => v
                            .to_string()
                            .parse::<serde_json::Number>()
                            .map(serde_json::Value::Number)
                            .unwrap_or_else(|_| serde_json::Value::String(v.to_string())),
                        v => serde_json::Value::String(v.to_string()),
                    }
                };
                object.insert(key.to_string(), json);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            out.finish(),
        )))
    }
}

/// `generate_subscripts(array, dim)` as catalog queries use it, beside
/// `unnest` over `pg_index.indkey` (SQLAlchemy's index and constraint
/// reflection). In Postgres it returns a set; DataFusion has no
/// set-returning scalar functions, so this one plans (as integer) and answers
/// only arrays that have no elements, such as those of this server's empty
/// `pg_index`. Any other array is an error, never a wrong number.
#[derive(Debug, PartialEq, Eq, Hash)]
struct GenerateSubscripts {
    signature: datafusion::logical_expr::Signature,
}

impl GenerateSubscripts {
    fn new() -> Self {
        Self {
            signature: datafusion::logical_expr::Signature::any(
                2,
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for GenerateSubscripts {
    fn name(&self) -> &str {
        "generate_subscripts"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _args: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Int32)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::Int32Array;
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        only_empty_arrays(
            &arrays[0],
            "generate_subscripts",
            "use unnest() and row_number()",
        )?;
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            Int32Array::new_null(args.number_rows),
        )))
    }
}

/// The stand-ins for Postgres's set-returning catalog functions answer only
/// arrays without elements (all that this server's empty `pg_index` holds);
/// anything else is an error, never a wrong number.
fn only_empty_arrays(
    array: &datafusion::arrow::array::ArrayRef,
    function: &str,
    instead: &str,
) -> datafusion::error::Result<()> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    if array.logical_null_count() == array.len() {
        return Ok(()); // no rows, or only NULL arrays
    }
    let lengths = datafusion::arrow::compute::kernels::length::length(array)?;
    let lengths = datafusion::arrow::compute::cast(&lengths, &DataType::Int64)?;
    let any = lengths
        .as_primitive_opt::<Int64Type>()
        .is_none_or(|l| l.iter().any(|v| v.unwrap_or(0) > 0));
    if any {
        return Err(DataFusionError::NotImplemented(format!(
            "{function}() over a non-empty array: set-returning functions are not supported \
             here; {instead} instead"
        )));
    }
    Ok(())
}

/// `information_schema._pg_expandarray(array)`, which pgjdbc's
/// `getPrimaryKeys`/`getIndexInfo` call on `pg_index.indkey`: in Postgres a
/// set of `(x, n)` rows. Like [`GenerateSubscripts`] it plans (as one
/// `(x, n)` struct) and answers only empty arrays, such as those of this
/// server's empty `pg_index`; any other array is an error.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: datafusion::logical_expr::Signature,
}

impl ExpandArray {
    fn new() -> Self {
        Self {
            signature: datafusion::logical_expr::Signature::any(
                1,
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }

    fn fields(
        element: &datafusion::arrow::datatypes::DataType,
    ) -> datafusion::arrow::datatypes::Fields {
        use datafusion::arrow::datatypes::{DataType, Field};
        vec![
            Field::new("x", element.clone(), true),
            Field::new("n", DataType::Int32, true),
        ]
        .into()
    }

    fn element(
        t: &datafusion::arrow::datatypes::DataType,
    ) -> datafusion::arrow::datatypes::DataType {
        use datafusion::arrow::datatypes::DataType;
        match t {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                f.data_type().clone()
            }
            _ => DataType::Int16,
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        "_pg_expandarray"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        args: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        let element = args
            .first()
            .map(Self::element)
            .unwrap_or(datafusion::arrow::datatypes::DataType::Int16);
        Ok(datafusion::arrow::datatypes::DataType::Struct(
            Self::fields(&element),
        ))
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        only_empty_arrays(&arrays[0], "_pg_expandarray", "use unnest()")?;
        let element = Self::element(arrays[0].data_type());
        let fields = Self::fields(&element);
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            datafusion::arrow::array::StructArray::new_null(fields, args.number_rows),
        )))
    }
}

/// A `pg_get_*def(oid, …)` for objects that do not exist here: NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NoDefinition {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
}

impl NoDefinition {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for NoDefinition {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _args: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        Ok(datafusion::logical_expr::ColumnarValue::Scalar(
            datafusion::scalar::ScalarValue::Utf8(None),
        ))
    }
}

/// The server settings `current_setting(name)` reports (pandas, SQLAlchemy
/// and JDBC ask for a few); any other name is Postgres's error 42704.
const SETTINGS: &[(&str, &str)] = &[
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("default_transaction_read_only", "on"),
    ("transaction_read_only", "on"),
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("search_path", "gold"),
    ("max_identifier_length", "63"),
    ("max_index_keys", "32"),
    ("max_function_args", "100"),
    ("block_size", "8192"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("is_superuser", "off"),
    ("lc_collate", "C.UTF-8"),
    ("lc_ctype", "C.UTF-8"),
];

fn setting(name: &str) -> Option<&'static str> {
    let name = name.trim();
    SETTINGS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// Postgres's name of an Arrow type as DataFusion's `information_schema`
/// writes it (`Int64`, `Decimal128(18, 2)`, `Timestamp(µs, "UTC")`).
pub fn pg_type_name(arrow: &str) -> String {
    let t = arrow.trim();
    let name = match t {
        "Boolean" => "boolean",
        "Int8" | "Int16" | "UInt8" => "smallint",
        "Int32" | "UInt16" => "integer",
        "Int64" | "UInt32" => "bigint",
        "UInt64" => "numeric",
        "Float16" | "Float32" => "real",
        "Float64" => "double precision",
        "Utf8" | "LargeUtf8" | "Utf8View" => "text",
        "Binary" | "LargeBinary" | "BinaryView" => "bytea",
        "Date32" | "Date64" => "date",
        "Null" => "unknown",
        _ if t.starts_with("Decimal") => "numeric",
        _ if t.starts_with("Timestamp(") && t.ends_with(", None)") => "timestamp without time zone",
        _ if t.starts_with("Timestamp(") => "timestamp with time zone",
        _ if t.starts_with("Time32") || t.starts_with("Time64") => "time without time zone",
        _ if t.starts_with("Interval") || t.starts_with("Duration") => "interval",
        _ if t.starts_with("Dictionary(") => {
            // The value type follows the key type.
            let inner = t
                .trim_start_matches("Dictionary(")
                .trim_end_matches(')')
                .split_once(", ")
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            return pg_type_name(&inner);
        }
        _ if t.starts_with("List(")
            || t.starts_with("LargeList(")
            || t.starts_with("FixedSizeList(") =>
        {
            "ARRAY"
        }
        _ if t.starts_with("Struct(") => "record",
        _ => return t.to_ascii_lowercase(),
    };
    name.to_string()
}

/// Postgres's `udt_name` (the internal type name) of an Arrow type.
pub fn pg_udt_name(arrow: &str) -> String {
    match pg_type_name(arrow).as_str() {
        "boolean" => "bool",
        "smallint" => "int2",
        "integer" => "int4",
        "bigint" => "int8",
        "real" => "float4",
        "double precision" => "float8",
        "timestamp with time zone" => "timestamptz",
        "timestamp without time zone" => "timestamp",
        "time without time zone" => "time",
        other => return other.to_string(),
    }
    .to_string()
}

fn type_name_udf(name: &str, f: fn(&str) -> String) -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::{Array, StringArray};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::ColumnarValue;
    datafusion::logical_expr::create_udf(
        name,
        vec![DataType::Utf8],
        DataType::Utf8,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::common::cast::as_string_array(&arrays[0])?;
            let out: StringArray = (0..names.len())
                .map(|i| (!names.is_null(i)).then(|| f(names.value(i))))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::{pg_type_name, pg_udt_name};

    #[test]
    fn arrow_types_get_postgres_names() {
        for (arrow, pg, udt) in [
            ("Int64", "bigint", "int8"),
            ("Decimal128(18, 2)", "numeric", "numeric"),
            ("Dictionary(UInt16, Utf8)", "text", "text"),
            (
                "Timestamp(µs, \"UTC\")",
                "timestamp with time zone",
                "timestamptz",
            ),
            (
                "Timestamp(µs, None)",
                "timestamp without time zone",
                "timestamp",
            ),
            ("Date32", "date", "date"),
            ("Utf8View", "text", "text"),
            ("Float64", "double precision", "float8"),
            ("Boolean", "boolean", "bool"),
            ("BinaryView", "bytea", "bytea"),
        ] {
            assert_eq!(pg_type_name(arrow), pg, "{arrow}");
            assert_eq!(pg_udt_name(arrow), udt, "{arrow}");
        }
    }
}

/// `pg_settings` with the rows of [`SETTINGS`] (pgjdbc reads
/// `max_index_keys` from it before `getImportedKeys`).
fn pg_settings(
    schema: datafusion::arrow::datatypes::SchemaRef,
) -> datafusion::error::Result<datafusion::datasource::MemTable> {
    use datafusion::arrow::array::{new_null_array, ArrayRef, StringArray};
    let rows = SETTINGS.len();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            let text = |values: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(values)) };
            match f.name().as_str() {
                "name" => text(SETTINGS.iter().map(|(n, _)| *n).collect()),
                "setting" | "reset_val" => text(SETTINGS.iter().map(|(_, v)| *v).collect()),
                "context" => text(vec!["internal"; rows]),
                "source" => text(vec!["default"; rows]),
                "vartype" => text(vec!["string"; rows]),
                "pending_restart" => Arc::new(datafusion::arrow::array::BooleanArray::from(vec![
                        false;
                        rows
                    ])),
                _ => new_null_array(f.data_type(), rows),
            }
        })
        .collect();
    let batch = datafusion::arrow::array::RecordBatch::try_new(schema.clone(), columns)?;
    datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]])
}

fn current_setting() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::{Array, StringArray};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::ColumnarValue;
    datafusion::logical_expr::create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        datafusion::logical_expr::Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::common::cast::as_string_array(&arrays[0])?;
            let mut out = Vec::with_capacity(names.len());
            for name in names.iter() {
                match name {
                    None => out.push(None),
                    Some(n) => match setting(n) {
                        Some(v) => out.push(Some(v)),
                        None => {
                            return Err(DataFusionError::Plan(format!(
                                "unrecognized configuration parameter \"{n}\""
                            )))
                        }
                    },
                }
            }
            Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
        }),
    )
}

/// `to_regtype(name)`: the OID of a built-in type, NULL for any other name
/// (drivers probe for extension types such as hstore this way).
fn to_regtype() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::ColumnarValue;
    fn oid(name: &str) -> Option<i32> {
        Some(
            match name
                .trim()
                .trim_start_matches("pg_catalog.")
                .to_ascii_lowercase()
                .as_str()
            {
                "bool" | "boolean" => 16,
                "bytea" => 17,
                "int8" | "bigint" => 20,
                "int2" | "smallint" => 21,
                "int4" | "integer" | "int" => 23,
                "text" => 25,
                "oid" => 26,
                "json" => 114,
                "float4" | "real" => 700,
                "float8" | "double precision" => 701,
                "varchar" | "character varying" => 1043,
                "date" => 1082,
                "time" => 1083,
                "timestamp" | "timestamp without time zone" => 1114,
                "timestamptz" | "timestamp with time zone" => 1184,
                "interval" => 1186,
                "numeric" | "decimal" => 1700,
                "uuid" => 2950,
                "jsonb" => 3802,
                _ => return None,
            },
        )
    }
    datafusion::logical_expr::create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::common::cast::as_string_array(&arrays[0])?;
            let out: Int32Array = names.iter().map(|n| n.and_then(oid)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}
