//! Names and registration of the lake's tables. One catalog, `lakehouse`,
//! with a schema per layer (`bronze`, `silver`, `gold`), `quarantine` for
//! rejected rows and `system` for the job's own records. A table is the Delta
//! table in the matching folder; each lookup opens its latest version, so a
//! long-lived session sees every commit without restarting.
//! Owns names and folders; must not write tables.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;

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

/// Folder (relative to the lake root) of `schema.table`.
pub fn table_folder(schema: &str, table: &str) -> Option<String> {
    SCHEMAS
        .iter()
        .find(|(s, _)| *s == schema)
        .map(|(_, folder)| format!("{folder}/{table}"))
}

#[derive(Debug)]
pub struct LakeCatalog {
    schemas: HashMap<String, Arc<FolderSchema>>,
}

impl LakeCatalog {
    pub fn new(lake: &Lake, runtime: Arc<RuntimeEnv>) -> Self {
        let schemas = SCHEMAS
            .iter()
            .map(|(name, folder)| {
                (
                    name.to_string(),
                    Arc::new(FolderSchema {
                        lake: lake.clone(),
                        folder: folder.to_string(),
                        names: RwLock::new(Vec::new()),
                        runtime: runtime.clone(),
                    }),
                )
            })
            .collect();
        Self { schemas }
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
        SCHEMAS.iter().map(|(s, _)| s.to_string()).collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schemas
            .get(name)
            .map(|s| s.clone() as Arc<dyn SchemaProvider>)
    }
}

#[derive(Debug)]
struct FolderSchema {
    lake: Lake,
    folder: String,
    names: RwLock<Vec<String>>,
    runtime: Arc<RuntimeEnv>,
}

#[async_trait]
impl SchemaProvider for FolderSchema {
    fn table_names(&self) -> Vec<String> {
        self.names.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let url = self.lake.url(&format!("{}/{}", self.folder, name));
        let table = crate::delta::open(&url, self.lake.storage_options())
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(table) = table else { return Ok(None) };
        // Scans resolve files through the session's object store registry.
        let root = table.log_store().root_url().clone();
        let store_url = datafusion::execution::object_store::ObjectStoreUrl::parse(format!(
            "{}://{}",
            root.scheme(),
            &root[url::Position::BeforeHost..url::Position::AfterPort]
        ))?;
        if self.runtime.object_store(&store_url).is_err() {
            self.runtime.register_object_store(
                store_url.as_ref(),
                table.log_store().root_object_store(None),
            );
        }
        let provider = table.table_provider().await?;
        Ok(Some(provider))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| n == name)
    }
}
