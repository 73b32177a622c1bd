//! `lakehouse lineage`: which columns each table's columns are computed
//! from, read off DataFusion's logical plan of each model (the same plans a
//! run's preflight makes; nothing is read), down to bronze columns and the
//! landing globs behind them.
//!
//! A column's inputs are the columns its expression reads, followed through
//! projections, aggregates, windows, joins (each side), unions (every
//! branch) and CTEs, to the scanned tables.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};
use datafusion::prelude::SessionContext;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::pipeline::Pipeline;

/// `(table, column)`, the table as `layer.name`.
pub type ColumnRef = (String, String);

#[derive(Debug, Clone, Default)]
pub struct ColumnLineage {
    pub name: String,
    /// The expression that computes it, when it is more than a column read.
    pub expression: Option<String>,
    /// The columns of the model's inputs it is computed from.
    pub inputs: BTreeSet<ColumnRef>,
    /// The bronze columns it comes from, through every model in between.
    pub sources: BTreeSet<ColumnRef>,
}

#[derive(Debug, Clone, Default)]
pub struct TableLineage {
    pub table: String,
    /// `source` (bronze) or `model`.
    pub kind: &'static str,
    /// Tables it reads (models), or its landing glob (sources).
    pub inputs: Vec<String>,
    pub files: Option<String>,
    pub columns: Vec<ColumnLineage>,
    /// Why a model has no column lineage (it could not be planned yet).
    pub unplanned: Option<String>,
}

/// The lineage of every table of the pipeline, in run order.
pub async fn lineage(ctx: &SessionContext, pipeline: &Pipeline) -> Result<Vec<TableLineage>> {
    let plans = crate::model::preflight::plan_all(ctx, pipeline, false).await?;
    let mut out = Vec::new();
    for source in &pipeline.sources {
        out.push(TableLineage {
            table: format!("bronze.{}", source.name),
            kind: "source",
            inputs: vec![],
            files: Some(source.csv.files.clone()),
            columns: vec![],
            unplanned: None,
        });
    }
    // Column → direct inputs, per model, for the transitive closure.
    let mut direct: BTreeMap<ColumnRef, BTreeSet<ColumnRef>> = BTreeMap::new();
    for model in &pipeline.models {
        let table = model.table();
        let mut t = TableLineage {
            table: table.clone(),
            kind: "model",
            inputs: model.inputs.clone(),
            ..Default::default()
        };
        match plans.get(&table) {
            None => {
                t.unplanned = Some(
                    "not planned: an input has no table or declared columns yet (run the pipeline once)"
                        .into(),
                )
            }
            Some(plan) => {
                for (i, field) in plan.schema().fields().iter().enumerate() {
                    if field.name().starts_with('_') {
                        continue; // lineage columns are not written to the table
                    }
                    let mut inputs = BTreeSet::new();
                    trace(plan, i, &mut inputs)?;
                    direct.insert((table.clone(), field.name().clone()), inputs.clone());
                    t.columns.push(ColumnLineage {
                        name: field.name().clone(),
                        expression: expression_of(plan, i),
                        inputs,
                        sources: BTreeSet::new(),
                    });
                }
            }
        }
        out.push(t);
    }
    let bronze: BTreeSet<String> = pipeline
        .sources
        .iter()
        .map(|s| format!("bronze.{}", s.name))
        .collect();
    for t in out.iter_mut() {
        for c in t.columns.iter_mut() {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<ColumnRef> = c.inputs.iter().cloned().collect();
            while let Some(col) = stack.pop() {
                if !seen.insert(col.clone()) {
                    continue;
                }
                if bronze.contains(&col.0) {
                    c.sources.insert(col);
                } else if let Some(next) = direct.get(&col) {
                    stack.extend(next.iter().cloned());
                }
            }
        }
    }
    Ok(out)
}

/// `bronze.orders` from a scan's table reference (`orders`, `bronze.orders`
/// or `lakehouse.bronze.orders`).
fn table_name(reference: &datafusion::common::TableReference) -> String {
    match (reference.schema(), reference.table()) {
        (Some(schema), table) => format!("{schema}.{table}"),
        (None, table) => table.to_string(),
    }
}

/// The scanned columns output column `i` of `plan` is computed from.
fn trace(plan: &LogicalPlan, i: usize, out: &mut BTreeSet<ColumnRef>) -> Result<()> {
    let from_expr = |expr: &Expr, input: &LogicalPlan, out: &mut BTreeSet<ColumnRef>| {
        for c in expr.column_refs() {
            if let Ok(j) = input.schema().index_of_column(c) {
                trace(input, j, out)?;
            }
        }
        Ok::<_, Error>(())
    };
    match plan {
        LogicalPlan::Projection(p) => {
            if let Some(e) = p.expr.get(i) {
                from_expr(e, &p.input, out)?;
            }
        }
        LogicalPlan::Aggregate(a) => {
            let exprs: Vec<&Expr> = a.group_expr.iter().chain(a.aggr_expr.iter()).collect();
            if let Some(e) = exprs.get(i) {
                from_expr(e, &a.input, out)?;
            }
        }
        LogicalPlan::Window(w) => {
            let n = w.input.schema().fields().len();
            if i < n {
                trace(&w.input, i, out)?;
            } else if let Some(e) = w.window_expr.get(i - n) {
                from_expr(e, &w.input, out)?;
            }
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    if i < left {
                        trace(&j.left, i, out)?;
                    }
                }
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                    trace(&j.right, i, out)?
                }
                _ if i < left => trace(&j.left, i, out)?,
                _ => trace(&j.right, i - left, out)?,
            }
        }
        LogicalPlan::Union(u) => {
            for input in &u.inputs {
                trace(input, i, out)?;
            }
        }
        LogicalPlan::TableScan(t) => {
            if let Some(f) = t.projected_schema.fields().get(i) {
                out.insert((table_name(&t.table_name), f.name().clone()));
            }
        }
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {}
        other => {
            // Filters, sorts, limits, aliases, DISTINCT: the same columns
            // as their input.
            for input in other.inputs() {
                if input.schema().fields().len() == other.schema().fields().len() {
                    trace(input, i, out)?;
                }
            }
        }
    }
    Ok(())
}

/// The first expression along the way that is more than a column read.
fn expression_of(plan: &LogicalPlan, i: usize) -> Option<String> {
    let through = |e: &Expr, input: &LogicalPlan| match e.clone().unalias() {
        Expr::Column(c) => input
            .schema()
            .index_of_column(&c)
            .ok()
            .and_then(|j| expression_of(input, j)),
        other => Some(other.to_string()),
    };
    match plan {
        LogicalPlan::Projection(p) => p.expr.get(i).and_then(|e| through(e, &p.input)),
        LogicalPlan::Aggregate(a) => {
            let exprs: Vec<&Expr> = a.group_expr.iter().chain(a.aggr_expr.iter()).collect();
            exprs.get(i).and_then(|e| through(e, &a.input))
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                    expression_of(&j.right, i)
                }
                _ if i < left => expression_of(&j.left, i),
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => None,
                _ => expression_of(&j.right, i - left),
            }
        }
        LogicalPlan::Union(_) | LogicalPlan::TableScan(_) => None,
        other => other
            .inputs()
            .first()
            .filter(|input| input.schema().fields().len() == other.schema().fields().len())
            .and_then(|input| expression_of(input, i)),
    }
}

fn refs(set: &BTreeSet<ColumnRef>) -> Vec<String> {
    set.iter().map(|(t, c)| format!("{t}.{c}")).collect()
}

/// Only `table` and what it is computed from, when one is named.
pub fn upstream(all: Vec<TableLineage>, table: Option<&str>) -> Result<Vec<TableLineage>> {
    let Some(name) = table else { return Ok(all) };
    let (table, column) = match all.iter().find(|t| t.table == name) {
        Some(_) => (name.to_string(), None),
        None => match name.rsplit_once('.') {
            Some((t, c)) if all.iter().any(|x| x.table == t) => (t.to_string(), Some(c.to_string())),
            _ => {
                return Err(Error::Usage(format!(
                    "no table `{name}` in the pipeline (give layer.name or layer.name.column); tables: {}",
                    all.iter().map(|t| t.table.as_str()).collect::<Vec<_>>().join(", ")
                )))
            }
        },
    };
    let mut wanted: BTreeSet<String> = [table.clone()].into();
    for t in all.iter().rev() {
        if wanted.contains(&t.table) {
            wanted.extend(t.inputs.iter().cloned());
        }
    }
    let mut kept: Vec<TableLineage> = all
        .into_iter()
        .filter(|t| wanted.contains(&t.table))
        .collect();
    if let Some(column) = column {
        for t in kept.iter_mut().filter(|t| t.table == table) {
            if !t.columns.iter().any(|c| c.name == column) {
                return Err(Error::Usage(format!(
                    "{table} has no column `{column}`; it has {}",
                    t.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            t.columns.retain(|c| c.name == column);
        }
    }
    Ok(kept)
}

pub fn to_json(tables: &[TableLineage]) -> Value {
    json!({
        "tables": tables.iter().map(|t| json!({
            "table": t.table,
            "kind": t.kind,
            "inputs": t.inputs,
            "files": t.files,
            "unplanned": t.unplanned,
            "columns": t.columns.iter().map(|c| json!({
                "name": c.name,
                "expression": c.expression,
                "inputs": refs(&c.inputs),
                "sources": refs(&c.sources),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn to_text(tables: &[TableLineage]) -> String {
    let mut out = String::new();
    for t in tables {
        match &t.files {
            Some(glob) => out.push_str(&format!("{} <- {glob}\n", t.table)),
            None => out.push_str(&format!("{} <- {}\n", t.table, t.inputs.join(", "))),
        }
        if let Some(why) = &t.unplanned {
            out.push_str(&format!("  ({why})\n"));
        }
        for c in &t.columns {
            out.push_str(&format!("  {}", c.name));
            if let Some(e) = &c.expression {
                out.push_str(&format!(" = {e}"));
            }
            out.push('\n');
            out.push_str(&format!("      from {}\n", refs(&c.inputs).join(", ")));
            if c.sources != c.inputs {
                out.push_str(&format!("      bronze {}\n", refs(&c.sources).join(", ")));
            }
        }
    }
    out
}

fn node(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect()
}

/// Table-level graph: landing globs → bronze → silver → gold.
pub fn to_dot(tables: &[TableLineage]) -> String {
    let mut out = String::from("digraph lineage {\n  rankdir=LR;\n  node [shape=box];\n");
    for t in tables {
        out.push_str(&format!("  {} [label=\"{}\"];\n", node(&t.table), t.table));
        if let Some(glob) = &t.files {
            out.push_str(&format!(
                "  {} [label=\"{}\", shape=folder];\n  {} -> {};\n",
                node(&format!("files_{}", t.table)),
                glob.replace('"', "\\\""),
                node(&format!("files_{}", t.table)),
                node(&t.table)
            ));
        }
        for i in &t.inputs {
            out.push_str(&format!("  {} -> {};\n", node(i), node(&t.table)));
        }
    }
    out.push_str("}\n");
    out
}

pub fn to_mermaid(tables: &[TableLineage]) -> String {
    let mut out = String::from("flowchart LR\n");
    for t in tables {
        out.push_str(&format!("  {}[\"{}\"]\n", node(&t.table), t.table));
        if let Some(glob) = &t.files {
            out.push_str(&format!(
                "  {}[/\"{}\"/] --> {}\n",
                node(&format!("files_{}", t.table)),
                glob.replace('"', "'"),
                node(&t.table)
            ));
        }
        for i in &t.inputs {
            out.push_str(&format!("  {} --> {}\n", node(i), node(&t.table)));
        }
    }
    out
}
