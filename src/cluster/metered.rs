//! What the project's own plan nodes report in `EXPLAIN ANALYZE` and in
//! the staging plans' debug log: their output rows and their own compute
//! time, the time spent in their polls less the time spent polling their
//! input, so a node's figure does not repeat the nodes under it (as
//! DataFusion's own operators count `elapsed_compute`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, Time};
use futures::{Stream, StreamExt};

/// One partition's meters of a node: its own time and its output rows.
pub struct Meters {
    compute: Time,
    rows: Count,
    input: Arc<AtomicU64>,
}

impl Meters {
    pub fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        Self {
            compute: MetricBuilder::new(metrics).elapsed_compute(partition),
            rows: MetricBuilder::new(metrics).output_rows(partition),
            input: Arc::default(),
        }
    }

    /// `input` timed: the time spent polling it is not this node's.
    pub fn input(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        Box::pin(Polled {
            inner: input,
            time: Meter::Input(self.input.clone()),
        })
    }

    /// `output`, the node's stream over its timed input, timed and counted.
    pub fn output(self, output: SendableRecordBatchStream) -> SendableRecordBatchStream {
        Box::pin(Polled {
            inner: output,
            time: Meter::Own(Own {
                meters: self,
                total: 0,
            }),
        })
    }
}

/// A named count of a node, per partition (rows quarantined, spills).
pub fn counter(metrics: &ExecutionPlanMetricsSet, name: &'static str, partition: usize) -> Count {
    MetricBuilder::new(metrics).counter(name, partition)
}

enum Meter {
    /// Time polling a node's input, added up for the node's own meter.
    Input(Arc<AtomicU64>),
    Own(Own),
}

struct Own {
    meters: Meters,
    /// Nanoseconds in this stream's polls not yet reported.
    total: u64,
}

impl Own {
    /// Reports the time since the last report, less its input's share.
    fn settle(&mut self) {
        let input = self.meters.input.swap(0, Ordering::Relaxed);
        let own = std::mem::take(&mut self.total).saturating_sub(input);
        self.meters.compute.add_duration(Duration::from_nanos(own));
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        self.settle();
    }
}

struct Polled {
    inner: SendableRecordBatchStream,
    time: Meter,
}

impl Stream for Polled {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let start = Instant::now();
        let polled = self.inner.poll_next_unpin(cx);
        let spent = start.elapsed().as_nanos() as u64;
        match &mut self.time {
            Meter::Input(total) => {
                total.fetch_add(spent, Ordering::Relaxed);
            }
            Meter::Own(own) => {
                own.total += spent;
                match &polled {
                    Poll::Ready(Some(Ok(batch))) => own.meters.rows.add(batch.num_rows()),
                    Poll::Ready(_) => own.settle(),
                    Poll::Pending => {}
                }
            }
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl RecordBatchStream for Polled {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    /// The node's own time excludes what its input took, and its rows are
    /// counted.
    #[tokio::test]
    async fn own_time_leaves_out_the_input_and_rows_are_counted() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, false)]));
        let batch = |n: i32| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int32Array::from_iter_values(0..n))],
            )
            .unwrap()
        };
        // The input sleeps 30 ms per batch; the node 10 ms per batch.
        let slow_input = futures::stream::iter(vec![batch(3), batch(5)]).map(|b| {
            std::thread::sleep(Duration::from_millis(30));
            Ok(b)
        });
        let metrics = ExecutionPlanMetricsSet::new();
        let meters = Meters::new(&metrics, 0);
        let input = meters.input(Box::pin(RecordBatchStreamAdapter::new(
            schema.clone(),
            slow_input,
        )));
        let node = input.map(|b| {
            std::thread::sleep(Duration::from_millis(10));
            b
        });
        let out = meters.output(Box::pin(RecordBatchStreamAdapter::new(
            schema.clone(),
            node,
        )));
        let batches: Vec<RecordBatch> = out.map(|b| b.unwrap()).collect().await;
        assert_eq!(batches.len(), 2);
        let set = metrics.clone_inner();
        assert_eq!(set.output_rows(), Some(8));
        let own = Duration::from_nanos(set.elapsed_compute().unwrap() as u64);
        assert!(own >= Duration::from_millis(20), "{own:?}");
        assert!(
            own < Duration::from_millis(55),
            "{own:?} counts the input's 60 ms"
        );
    }
}
