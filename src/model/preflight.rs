//! Before a run ingests anything, every model is planned against the
//! schemas of its inputs (bronze as it is in the lake plus the columns its
//! source declares; each model's result feeds the models after it), and
//! what its settings name is checked against what its SELECT returns: an
//! expectation over a column the model does not return, or a `unique_key`
//! that is not a column, stops the run at the settings file's line, before
//! a single file is taken.
//!
//! A model that cannot be planned yet (a bronze column that only a file
//! landing in this run brings, a source without declared columns and no
//! table yet) is left to the run itself, which reports it as before.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
};
use datafusion::common::DFSchema;
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;

use crate::catalog::CATALOG;
use crate::error::Result;
use crate::pipeline::{Model, Pipeline, LAYERS};

/// Checks every model of `pipeline` against the tables `ctx` sees (a
/// session over the lake), without running anything.
pub async fn check(ctx: &SessionContext, pipeline: &Pipeline) -> Result<()> {
    plan_all(ctx, pipeline, true).await.map(|_| ())
}

/// Every model's logical plan (unoptimised, as written), planned against
/// empty tables of its inputs' schemas; `check` also checks each model's
/// settings against its result. Models that cannot be planned yet are left
/// out.
pub async fn plan_all(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    check: bool,
) -> Result<BTreeMap<String, datafusion::logical_expr::LogicalPlan>> {
    let mut plans = BTreeMap::new();
    let mut known: BTreeMap<String, SchemaRef> = BTreeMap::new();
    for source in &pipeline.sources {
        let name = format!("bronze.{}", source.name);
        let existing = match ctx.table_provider(name.as_str()).await {
            Ok(t) => Some(t.schema()),
            Err(_) => None,
        };
        let mut columns: Vec<String> = existing
            .iter()
            .flat_map(|s| s.fields().iter().map(|f| f.name().clone()))
            .filter(|c| !c.starts_with('_'))
            .collect();
        for c in source.csv.columns.iter().flatten() {
            if !columns.contains(&c.to_lowercase()) {
                columns.push(c.to_lowercase());
            }
        }
        // Without declared columns and a table, the first file decides.
        if !columns.is_empty() {
            known.insert(name, crate::ingest::bronze_schema(&columns));
        }
    }
    // Planning happens in a copy of the session whose catalog holds empty
    // tables of those schemas: nothing is read.
    let catalog = Arc::new(MemoryCatalogProvider::new());
    for layer in LAYERS {
        catalog.register_schema(layer, Arc::new(MemorySchemaProvider::new()))?;
    }
    let state = SessionStateBuilder::new_from_existing(ctx.state())
        .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
        .build();
    let scratch = SessionContext::new_with_state(state);
    scratch.register_catalog(CATALOG, catalog);
    for (name, schema) in &known {
        scratch.register_table(name.as_str(), Arc::new(EmptyTable::new(schema.clone())))?;
    }
    for model in &pipeline.models {
        if !model.inputs.iter().all(|i| known.contains_key(i)) {
            continue;
        }
        let df = match scratch.sql(&model.sql).await {
            Ok(df) => df,
            Err(e) => {
                tracing::debug!(model = %model.table(), error = %e, "not planned before the run");
                continue;
            }
        };
        let result: Schema = df.schema().as_arrow().clone();
        if check {
            check_model(&scratch, model, &result)?;
        }
        plans.insert(model.table(), df.logical_plan().clone());
        let table = model.table();
        scratch.deregister_table(table.as_str())?;
        scratch.register_table(
            table.as_str(),
            Arc::new(EmptyTable::new(Arc::new(result.clone()))),
        )?;
        known.insert(table, Arc::new(result));
    }
    Ok(plans)
}

/// What a model's settings name, checked against the columns its SELECT
/// returns: the key, partition and sequence columns, and every
/// expectation's check.
pub fn check_model(ctx: &SessionContext, model: &Model, result: &Schema) -> Result<()> {
    check_columns(model, result)?;
    let unqualified = DFSchema::try_from(result.clone())?;
    let settings_file = model.sql_file.with_extension("toml");
    crate::quality::plan_rules(
        ctx,
        &unqualified,
        &model.settings.expectations,
        &settings_file,
    )?;
    Ok(())
}

/// The key, partition and sequence columns the settings name, checked
/// against the columns the model's SELECT returns. (A run checks the
/// expectations where it plans them for the checker.)
pub fn check_columns(model: &Model, result: &Schema) -> Result<()> {
    let settings = &model.settings;
    let settings_file = model.sql_file.with_extension("toml");
    let columns: Vec<&str> = result.fields().iter().map(|f| f.name().as_str()).collect();
    for (what, list) in [
        ("partition_by", &settings.partition_by),
        ("unique_key", &settings.unique_key),
        ("sequence_by", &settings.sequence_by),
    ] {
        for c in list.iter() {
            if !columns.contains(&c.as_str()) {
                let hint = crate::pipeline::nearest(c, columns.iter().copied())
                    .map(|n| format!(" Did you mean {n}?"))
                    .unwrap_or_default();
                return Err(crate::pipeline::file_error(
                    &settings_file,
                    settings.line_of(what),
                    format!(
                        "{what} names column `{c}`, which the model's SELECT does not return (it returns {}).{hint}",
                        columns.join(", ")
                    ),
                ));
            }
        }
    }
    for c in settings
        .partition_by
        .iter()
        .chain(settings.unique_key.iter())
    {
        if c.starts_with('_') {
            return Err(crate::pipeline::file_error(
                &settings_file,
                settings.line_of("partition_by"),
                format!("`{c}` starts with `_`, which marks a lineage column that is not written to the table"),
            ));
        }
    }
    Ok(())
}
