//! Names and registration of the lake's tables. One catalog, `lakehouse`,
//! with a schema per layer (`bronze`, `silver`, `gold`), `quarantine` for
//! rejected rows and `system` for the job's own records. A table is the Delta
//! table in the matching folder; each lookup opens its latest version, so a
//! long-lived session sees every commit without restarting.
//!
//! Time travel: `schema."table@v3"` is version 3 of the table and
//! `schema."table@2026-11-20T10:00:00Z"` (or `@2026-11-20`, midnight UTC) the
//! version that was current at that instant. Table names are plain
//! identifiers (letters, digits, `_`): anything else is no table, so a name
//! can never reach outside its layer's folder.
//! Owns names and folders; must not write tables.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

use crate::delta::At;
use crate::error::Result;
use crate::storage::Lake;

pub const CATALOG: &str = "lakehouse";

/// (schema name, folder under the lake root).
pub const SCHEMAS: [(&str, &str); 5] = [
    ("bronze", "bronze"),
    ("silver", "silver"),
    ("gold", "gold"),
    ("quarantine", "quarantine"),
    ("system", "_lakehouse"),
];

/// A table folder of the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFolder {
    pub schema: &'static str,
    pub name: String,
    /// Relative to the lake root: `silver/orders`.
    pub folder: String,
}

/// Every table folder of the lake, schema by schema, in the order of
/// [`SCHEMAS`] and by name within one: what `lakehouse tables`, the HTTP
/// listing and the maintenance commands walk.
pub async fn list_tables(lake: &Lake) -> Result<Vec<TableFolder>> {
    let mut out = Vec::new();
    for (schema, layer) in SCHEMAS {
        for name in lake.list_folders(layer).await? {
            let folder = format!("{layer}/{name}");
            out.push(TableFolder {
                schema,
                name,
                folder,
            });
        }
    }
    Ok(out)
}

/// Folder (relative to the lake root) of `schema.table`.
pub fn table_folder(schema: &str, table: &str) -> Option<String> {
    SCHEMAS
        .iter()
        .find(|(s, _)| *s == schema)
        .map(|(_, folder)| format!("{folder}/{table}"))
}

/// Folder of a table in one of the lake's own schemas (`bronze`, `silver`,
/// `gold`, `quarantine`, `system`); any other schema is a bug.
pub fn layer_folder(schema: &str, table: &str) -> String {
    table_folder(schema, table).unwrap_or_else(|| format!("{schema}/{table}"))
}

/// Folder of the quarantine table of `layer.name`:
/// `quarantine.<layer>_<name>` (bronze's rejects and models' dropped rows).
pub fn quarantine_folder(layer: &str, name: &str) -> String {
    layer_folder("quarantine", &format!("{layer}_{name}"))
}

/// The run lease (see [`crate::lock`]), beside the system tables.
pub const LOCK_FILE: &str = "_lakehouse/run.lock";

#[derive(Debug)]
pub struct LakeCatalog {
    schemas: HashMap<String, Arc<FolderSchema>>,
    /// The latest version of each table (`layer.name`) a query opened.
    served: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
    /// Schemas that are not lake folders, such as the `pg_catalog` the
    /// Postgres endpoint registers.
    extra: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
    /// Tables (`layer.name`) a model run has just opened at their latest
    /// version, used for its SQL instead of opening them again ([`pin`]).
    pinned: Pinned,
}

/// Each pinned table, and how many runs of models pin it now (models
/// that run at the same time may pin the same input).
type Pinned = Arc<RwLock<HashMap<String, (deltalake::DeltaTable, usize)>>>;

/// While the returned guard lives, a lookup of each of `tables` (`layer.name`
/// with the table opened at its latest version) in `ctx`'s lake catalog
/// gives that table instead of opening it again: a model's SQL reads the
/// very versions its run recorded as inputs, and each open (a replay of the
/// Delta log: 45-65 ms for a table of 1,800 files) happens once.
pub fn pin<'a>(
    ctx: &datafusion::prelude::SessionContext,
    tables: impl IntoIterator<Item = (&'a String, &'a deltalake::DeltaTable)>,
) -> PinGuard {
    let Some(catalog) = ctx.catalog(CATALOG) else {
        return PinGuard::default();
    };
    let Some(catalog) = catalog.as_ref().downcast_ref::<LakeCatalog>() else {
        return PinGuard::default();
    };
    let mut names = Vec::new();
    let mut pinned = catalog.pinned.write().unwrap_or_else(|p| p.into_inner());
    for (name, table) in tables {
        // Models pinning a table at once opened it at the same version
        // (its writer's wave ended before theirs began).
        pinned
            .entry(name.clone())
            .or_insert_with(|| (table.clone(), 0))
            .1 += 1;
        names.push(name.clone());
    }
    PinGuard {
        pinned: Some(catalog.pinned.clone()),
        names,
    }
}

/// Unpins its tables when dropped (see [`pin`]).
#[derive(Default)]
pub struct PinGuard {
    pinned: Option<Pinned>,
    names: Vec<String>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Some(pinned) = &self.pinned {
            let mut pinned = pinned.write().unwrap_or_else(|p| p.into_inner());
            for name in &self.names {
                if let Some((_, count)) = pinned.get_mut(name) {
                    *count -= 1;
                    if *count == 0 {
                        pinned.remove(name);
                    }
                }
            }
        }
    }
}

impl LakeCatalog {
    /// With `snapshots`, a table is read as the Parquet files of its
    /// snapshot ([`crate::cluster::scan::SnapshotTable`]), a scan that can
    /// run on other machines; otherwise through delta-rs.
    pub fn new(lake: &Lake, runtime: Arc<RuntimeEnv>, snapshots: bool) -> Self {
        let served: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> =
            Default::default();
        let pinned: Pinned = Default::default();
        let schemas = SCHEMAS
            .iter()
            .map(|(name, folder)| {
                (
                    name.to_string(),
                    Arc::new(FolderSchema {
                        schema: name.to_string(),
                        served: served.clone(),
                        pinned: pinned.clone(),
                        lake: lake.clone(),
                        folder: folder.to_string(),
                        names: RwLock::new(Vec::new()),
                        runtime: runtime.clone(),
                        snapshots,
                    }),
                )
            })
            .collect();
        Self {
            schemas,
            served,
            extra: RwLock::new(HashMap::new()),
            pinned,
        }
    }

    /// The latest version of each table a query opened, shared and live.
    pub fn versions_served(
        &self,
    ) -> Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> {
        self.served.clone()
    }

    /// Re-lists the table folders so that `SHOW TABLES` and
    /// `information_schema` see tables created since the last refresh.
    pub async fn refresh(&self) -> Result<()> {
        for schema in self.schemas.values() {
            let names = schema.lake.list_folders(&schema.folder).await?;
            *schema.names.write().unwrap_or_else(|p| p.into_inner()) = names;
        }
        Ok(())
    }
}

impl CatalogProvider for LakeCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = SCHEMAS.iter().map(|(s, _)| s.to_string()).collect();
        names.extend(
            self.extra
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(s) = self.schemas.get(name) {
            return Some(s.clone() as Arc<dyn SchemaProvider>);
        }
        self.extra
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        if self.schemas.contains_key(name) {
            return Err(DataFusionError::Plan(format!(
                "schema `{name}` is a lake layer and cannot be replaced"
            )));
        }
        Ok(self
            .extra
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), schema))
    }
}

#[derive(Debug)]
struct FolderSchema {
    schema: String,
    served: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
    pinned: Pinned,
    lake: Lake,
    folder: String,
    names: RwLock<Vec<String>>,
    runtime: Arc<RuntimeEnv>,
    snapshots: bool,
}

#[async_trait]
impl SchemaProvider for FolderSchema {
    fn table_names(&self) -> Vec<String> {
        self.names.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some((base, at)) = parse_table_name(name)? else {
            return Ok(None);
        };
        let url = self.lake.url(&format!("{}/{}", self.folder, base));
        let pinned = match at {
            At::Latest => self
                .pinned
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&format!("{}.{base}", self.schema))
                .map(|(table, _)| table.clone()),
            _ => None,
        };
        let table = match pinned {
            Some(table) => Ok(Some(table)),
            None => crate::delta::open_at(&url, self.lake.storage_options(), &at).await,
        }
        .map_err(|e| match at {
            At::Latest => DataFusionError::External(Box::new(e)),
            _ => DataFusionError::Plan(format!(
                "table `{base}` has no version for `{name}`: {e}. \
                     `lakehouse tables` shows the current version; versions start at 0."
            )),
        })?;
        let Some(table) = table else { return Ok(None) };
        if at != At::Latest {
            // Time travel past a vacuum's retention: say so, instead of a
            // missing-file error in the middle of the scan.
            if let (Some(v), Ok(Some(latest))) = (
                table.version(),
                crate::delta::open(&url, self.lake.storage_options()).await,
            ) {
                if let Some(why) = crate::maintain::vacuumed_away(&latest, v)
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                {
                    return Err(DataFusionError::Plan(format!("table `{base}`: {why}")));
                }
            }
        }
        if let (At::Latest, Some(v)) = (&at, table.version()) {
            self.served
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(format!("{}.{base}", self.schema), v);
        }
        if self.snapshots {
            let snapshot = crate::cluster::scan::SnapshotTable::resolve(&table)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            return Ok(Some(Arc::new(snapshot)));
        }
        // Scans resolve files through the session's object store registry.
        let root = table.log_store().root_url().clone();
        let store_url = datafusion::execution::object_store::ObjectStoreUrl::parse(
            crate::storage::store_of(&root),
        )?;
        if self.runtime.object_store(&store_url).is_err() {
            self.runtime.register_object_store(
                store_url.as_ref(),
                table.log_store().root_object_store(None),
            );
        }
        let provider = table.table_provider().await?;
        Ok(Some(Arc::new(LakeTable { inner: provider })))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| n == name)
    }
}

/// A lake table as DataFusion sees it: delta-rs's provider, with one fix.
///
/// A query that reads only partition columns is answered from the Delta log
/// by delta-rs's metadata scan, which says a limit may be pushed through it
/// but has no input to push it to, so DataFusion's limit pushdown dropped the
/// limit (`SELECT region FROM gold.daily_region_sales LIMIT 1` returned every
/// partition). A leaf plan that claims pushdown but takes no fetch is put
/// under [`KeepLimit`], which makes the optimizer keep the limit above it.
#[derive(Debug)]
pub(crate) struct LakeTable {
    inner: Arc<dyn TableProvider>,
}

#[async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&datafusion::common::Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> datafusion::logical_expr::TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        Ok(KeepLimit::wrap(plan))
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn datafusion::catalog::Session,
        args: datafusion::catalog::ScanArgs<'a>,
    ) -> DfResult<datafusion::catalog::ScanResult> {
        let plan = self.inner.scan_with_args(state, args).await?.into_inner();
        Ok(KeepLimit::wrap(plan).into())
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::logical_expr::Expr],
    ) -> DfResult<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<datafusion::common::Statistics> {
        self.inner.statistics()
    }
}

/// Passes its input through unchanged; exists so that limit pushdown stops
/// here (see [`LakeTable`]).
#[derive(Debug)]
struct KeepLimit {
    input: Arc<dyn ExecutionPlan>,
}

impl KeepLimit {
    fn wrap(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let drops_limits = plan.children().is_empty()
            && plan.supports_limit_pushdown()
            && plan.with_fetch(Some(1)).is_none();
        if drops_limits {
            Arc::new(KeepLimit { input: plan })
        } else {
            plan
        }
    }
}

impl DisplayAs for KeepLimit {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "KeepLimit")
    }
}

impl ExecutionPlan for KeepLimit {
    fn name(&self) -> &str {
        "KeepLimit"
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("KeepLimit has one child".into()))?;
        Ok(Arc::new(KeepLimit { input }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> DfResult<datafusion::execution::SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }
}

/// Splits `table@v3` / `table@2026-11-20T10:00:00Z` / `table@2026-11-20`
/// into the table and the version wanted. `None` for a name that cannot be
/// a lake table (anything but letters, digits and `_`).
pub fn parse_table_name(name: &str) -> DfResult<Option<(&str, At)>> {
    let (base, at) = match name.split_once('@') {
        None => (name, At::Latest),
        Some((base, spec)) => (
            base,
            parse_at(spec).ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "`{name}`: after `@` give a version (`@v3`) or an instant \
                 (`@2026-11-20T10:00:00Z` or `@2026-11-20`)"
                ))
            })?,
        ),
    };
    if base.is_empty() || !base.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Ok(None);
    }
    Ok(Some((base, at)))
}

fn parse_at(spec: &str) -> Option<At> {
    if let Some(v) = spec.strip_prefix('v').or_else(|| spec.strip_prefix('V')) {
        return v.parse::<u64>().ok().map(At::Version);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(spec) {
        return Some(At::Timestamp(t.with_timezone(&chrono::Utc)));
    }
    chrono::NaiveDate::parse_from_str(spec, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| At::Timestamp(t.and_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_and_versions() {
        assert_eq!(
            parse_table_name("orders").unwrap(),
            Some(("orders", At::Latest))
        );
        assert_eq!(
            parse_table_name("orders@v3").unwrap(),
            Some(("orders", At::Version(3)))
        );
        let Some((_, At::Timestamp(t))) =
            parse_table_name("orders@2026-11-20T10:00:00+01:00").unwrap()
        else {
            panic!("not a timestamp")
        };
        assert_eq!(t.to_rfc3339(), "2026-11-20T09:00:00+00:00");
        assert!(matches!(
            parse_table_name("orders@2026-11-20").unwrap(),
            Some((_, At::Timestamp(_)))
        ));
        assert!(parse_table_name("orders@yesterday").is_err());
        for bad in ["../../etc", "a/b", "", "x.y", "..", "%2e%2e"] {
            assert_eq!(parse_table_name(bad).unwrap(), None, "{bad}");
        }
    }

    /// While pinned (by any model), a table is read at the pinned version
    /// even after a newer commit; unpinned, at its latest again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pinned_table_is_read_at_its_pinned_version() {
        use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch};
        use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap(), HashMap::new()).unwrap();
        let url = lake.url("silver/t");
        let spec = crate::delta::WriteSpec {
            table_name: "silver.t".into(),
            partition_by: vec![],
            replace: crate::delta::Replace::Nothing,
            transactions: vec![],
            metadata: HashMap::new(),
            description: None,
            symlink_manifest: false,
            upsert: None,
        };
        let append = |rows: i64| {
            let (url, spec) = (url.clone(), spec.clone());
            async move {
                let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
                let b = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from_iter_values(0..rows)) as Arc<dyn Array>],
                )
                .unwrap();
                let table = crate::delta::ensure_table(&url, &HashMap::new(), &schema, &spec)
                    .await
                    .unwrap();
                let stream = Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::iter(vec![Ok(b)]),
                ));
                crate::delta::write(table, vec![stream], &spec)
                    .await
                    .unwrap();
            }
        };
        append(1).await;
        let first = crate::delta::open(&url, &HashMap::new())
            .await
            .unwrap()
            .unwrap();
        append(2).await;
        let (ctx, _) = crate::session::build(&lake, &crate::session::SessionOptions::default())
            .await
            .unwrap();
        let count = || async {
            let b = ctx
                .sql("SELECT count(*) FROM silver.t")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            b[0].column(0).as_primitive::<Int64Type>().value(0)
        };
        assert_eq!(count().await, 3);
        let name = "silver.t".to_string();
        let pins = pin(&ctx, [(&name, &first)]);
        assert_eq!(count().await, 1, "the pinned version");
        // Two models running at once pin the same input: it stays pinned
        // until both are done.
        let again = pin(&ctx, [(&name, &first)]);
        drop(pins);
        assert_eq!(count().await, 1, "still pinned by the other");
        drop(again);
        assert_eq!(count().await, 3, "unpinned: the latest");
    }
}
