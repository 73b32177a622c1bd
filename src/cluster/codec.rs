//! How the project's own plan pieces travel between driver, scheduler and
//! executors: each is a small JSON recipe behind a tag, and everything else
//! goes to Ballista's own codecs. Every node is this binary, so every node
//! can rebuild what the recipe names.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use super::scan::{Recipe, SnapshotTable};

/// Marks a recipe of ours; Ballista's own encodings never start with it.
const TAG: &[u8] = b"lakehouse:";

fn tagged(kind: &str, body: &impl serde::Serialize, buf: &mut Vec<u8>) -> DfResult<()> {
    buf.extend_from_slice(TAG);
    buf.extend_from_slice(kind.as_bytes());
    buf.push(b'\n');
    serde_json::to_writer(buf, body).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// `(kind, body)` of a recipe of ours, `None` for anything else.
fn untag(buf: &[u8]) -> Option<(&str, &[u8])> {
    let rest = buf.strip_prefix(TAG)?;
    let end = rest.iter().position(|b| *b == b'\n')?;
    Some((std::str::from_utf8(&rest[..end]).ok()?, &rest[end + 1..]))
}

fn parse<T: serde::de::DeserializeOwned>(kind: &str, body: &[u8]) -> DfResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        DataFusionError::Internal(format!(
            "cannot read a `{kind}` plan node sent by another lakehouse node: {e}. Every node of a cluster must run the same lakehouse version"
        ))
    })
}

#[derive(Debug, Default)]
pub struct LogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DfResult<Extension> {
        match untag(buf) {
            Some((kind, body)) => super::stage::decode_logical(kind, body, inputs),
            None => self.ballista.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        match super::stage::encode_logical(node)? {
            Some((kind, body)) => tagged(kind, &body, buf),
            None => self.ballista.try_encode(node, buf),
        }
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        match untag(buf) {
            Some(("snapshot", body)) => {
                let recipe: Recipe = parse("snapshot", body)?;
                Ok(Arc::new(SnapshotTable::from_recipe(recipe, schema)?))
            }
            Some((kind, _)) => Err(DataFusionError::Internal(format!(
                "unknown table kind `{kind}` for {table_ref}"
            ))),
            None => self
                .ballista
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        if let Some(table) = node.downcast_ref::<SnapshotTable>() {
            return tagged("snapshot", table.recipe(), buf);
        }
        if node.is::<crate::catalog::LakeTable>() {
            return Err(DataFusionError::Plan(format!(
                "{table_ref} is read through delta-rs's scan, which cannot run on a cluster. This is a bug: cluster sessions must read snapshots"
            )));
        }
        self.ballista
            .try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> DfResult<()> {
        self.ballista.try_encode_file_format(buf, node)
    }
}

#[derive(Debug, Default)]
pub struct PhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match untag(buf) {
            Some((kind, body)) => super::stage::decode_physical(kind, body, inputs),
            None => self.ballista.try_decode(buf, inputs, ctx, proto),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        match super::stage::encode_physical(&node)? {
            Some((kind, body)) => tagged(kind, &body, buf),
            None => self.ballista.try_encode(node, buf, proto),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_foreign_bytes_are_not_ours() {
        let mut buf = Vec::new();
        tagged("snapshot", &serde_json::json!({"a": 1}), &mut buf).unwrap();
        let (kind, body) = untag(&buf).unwrap();
        assert_eq!(kind, "snapshot");
        assert_eq!(body, br#"{"a":1}"#);
        assert!(untag(b"\x0a\x03abc").is_none());
        assert!(untag(b"lakehouse:no-newline").is_none());
        let err = parse::<Recipe>("snapshot", b"{}").unwrap_err().to_string();
        assert!(err.contains("same lakehouse version"), "{err}");
    }
}
