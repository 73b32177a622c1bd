//! Groups a staging writer's rows by table partition without sorting them:
//! each row's partition gets a group id (DataFusion's vectorised group
//! table, as a hash aggregation does), each batch is reordered by group as
//! it comes (a counting sort of a few thousand rows, in cache), and when
//! the input ends each partition's rows are copied out of the batches held
//! as runs, in partition order, for the writer to write one file per
//! partition.
//!
//! When the memory pool has no room for the next batch, the rows of the
//! oldest batches held (at least a quarter of what is held) are gathered
//! into one spill file (an Arrow IPC file, one run of messages per group,
//! in group order, with their places noted), and those batches are freed.
//! At the end each group's messages are read back from every spill file by
//! their place (no merge, no comparisons) before its rows still held.
//!
//! This replaced a sort by the partition columns under the writers. That
//! sort compared every row, reserved twice its input (the sorted copy), so
//! it spilled at half the memory, and merged its sorted runs row by row.
//! At 10M rows of the example under the default 2 GB it spilled all of
//! silver's 9.1M rows (1.5 GB) and merged them back.
//! Owns grouping rows by partition within a memory reservation; must not
//! know about tables or stores.

use std::io::BufWriter;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::{lexsort_to_indices, SortColumn};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::spill_file::SpillFile;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::metrics::{Count, Time};

/// Where a gather counts its spills and times its work (its node's
/// metrics).
#[derive(Default, Clone)]
pub struct Meters {
    pub count: Count,
    pub bytes: Count,
    /// Finding each row's group.
    pub group: Time,
    /// Gathering groups into spill files and writing them.
    pub spill: Time,
    /// Gathering groups for the writer and reading them back.
    pub out: Time,
}

/// A group's rows in one batch held: (batch, first row, rows).
type Place = (u32, u32, u32);

/// A group's rows in one batch reordered by group: (group, first row, rows).
type GroupRun = (usize, u32, u32);

/// One spill: the file, and per group id the messages that hold its rows.
struct Run {
    file: Arc<dyn SpillFile>,
    messages: Vec<Vec<usize>>,
}

/// Rows of `schema` grouped by the columns `keys`; see the module's note.
pub struct Gather {
    schema: SchemaRef,
    keys: Vec<usize>,
    groups: Box<dyn GroupValues>,
    ids: Vec<usize>,
    held: Vec<RecordBatch>,
    /// What the reservation counts for each batch held.
    sizes: Vec<usize>,
    /// Per group id, the runs of its rows in the batches held, oldest first.
    places: Vec<Vec<Place>>,
    runs: Vec<Run>,
    reservation: MemoryReservation,
    ctx: Arc<TaskContext>,
    batch_size: usize,
    meters: Meters,
}

impl Gather {
    /// A gather of rows of `schema` by the columns named `keys`, holding
    /// them within `ctx`'s memory pool as the consumer `name`.
    pub fn try_new(
        schema: SchemaRef,
        keys: &[String],
        ctx: Arc<TaskContext>,
        name: String,
        meters: Meters,
    ) -> DfResult<Self> {
        let keys: Vec<usize> = keys
            .iter()
            .map(|k| schema.index_of(k))
            .collect::<Result<_, _>>()?;
        let key_schema = Arc::new(schema.project(&keys)?);
        let groups = new_group_values(key_schema, &GroupOrdering::None)?;
        let reservation = MemoryConsumer::new(name)
            .with_can_spill(true)
            .register(ctx.memory_pool());
        let batch_size = ctx.session_config().batch_size().max(1);
        Ok(Self {
            schema,
            keys,
            groups,
            ids: Vec::new(),
            held: Vec::new(),
            sizes: Vec::new(),
            places: Vec::new(),
            runs: Vec::new(),
            reservation,
            ctx,
            batch_size,
            meters,
        })
    }

    /// Takes `batch` in: held if the pool has room, or else after the
    /// oldest batches held (at least a quarter of what is held) are
    /// spilled; spilled with everything held when even that is not room.
    pub fn push(&mut self, batch: RecordBatch) -> DfResult<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        if self.held.len() >= u32::MAX as usize || rows > u32::MAX as usize {
            self.spill(self.held.len())?;
        }
        let timer = self.meters.group.timer();
        // A batch whose text rows point into a larger buffer (a slice of a
        // page, or of a batch split by hash) gets buffers of its own, so
        // what is held is what is counted.
        let batch = crate::dedup::compact(batch)?;
        let keys: Vec<ArrayRef> = self.keys.iter().map(|&i| batch.column(i).clone()).collect();
        self.groups.intern(&keys, &mut self.ids)?;
        let (batch, runs) = self.by_group(&batch)?;
        timer.done();
        let size = batch.get_array_memory_size() + runs.len() * std::mem::size_of::<Place>();
        if self.reservation.try_grow(size).is_err() {
            // Spilling only the oldest rows keeps the spill to about what
            // does not fit (spilling all that is held, a table a little
            // over the memory spilled nearly whole).
            let want = size.max(self.reservation.size() / 4);
            let mut freed = 0;
            let oldest = self
                .sizes
                .iter()
                .take_while(|&&s| {
                    let more = freed < want;
                    freed += s;
                    more
                })
                .count();
            self.spill(oldest)?;
            if self.reservation.try_grow(size).is_err() {
                // Not even with a quarter gone: everything goes to disk,
                // this batch too.
                self.place(batch, runs, 0);
                return self.spill(self.held.len());
            }
        }
        self.place(batch, runs, size);
        Ok(())
    }

    /// `batch` reordered by group (in the order its groups first appear),
    /// and each group's run in it: (group, first row, rows). Its group
    /// ids are in `self.ids`.
    fn by_group(&self, batch: &RecordBatch) -> DfResult<(RecordBatch, Vec<GroupRun>)> {
        use datafusion::arrow::array::UInt32Array;
        use datafusion::arrow::compute::take_record_batch;
        // Counting sort: rows per group, then each group's first slot.
        let mut next = vec![0u32; self.groups.len()];
        let mut first_seen: Vec<usize> = Vec::new();
        for &g in &self.ids {
            if next[g] == 0 {
                first_seen.push(g);
            }
            next[g] += 1;
        }
        let mut runs = Vec::with_capacity(first_seen.len());
        let mut start = 0u32;
        for &g in &first_seen {
            runs.push((g, start, next[g]));
            start += next[g];
            next[g] = start - next[g];
        }
        if runs.len() == 1 {
            return Ok((batch.clone(), runs));
        }
        let mut order = vec![0u32; self.ids.len()];
        for (row, &g) in self.ids.iter().enumerate() {
            order[next[g] as usize] = row as u32;
            next[g] += 1;
        }
        let batch = take_record_batch(batch, &UInt32Array::from(order))?;
        Ok((batch, runs))
    }

    /// Holds `batch` (reordered by group, its runs `runs`), counted as `size`.
    fn place(&mut self, batch: RecordBatch, runs: Vec<GroupRun>, size: usize) {
        if self.places.len() < self.groups.len() {
            self.places.resize_with(self.groups.len(), Vec::new);
        }
        let at = self.held.len() as u32;
        for (group, start, rows) in runs {
            self.places[group].push((at, start, rows));
        }
        self.held.push(batch);
        self.sizes.push(size);
    }

    /// Writes the rows of the `oldest` batches held to a new spill file,
    /// each group's in messages of up to a batch, and frees those batches.
    fn spill(&mut self, oldest: usize) -> DfResult<()> {
        let oldest = oldest.min(self.held.len());
        if oldest == 0 {
            return Ok(());
        }
        let time = self.meters.spill.clone();
        let _timer = time.timer();
        let file = self
            .ctx
            .runtime_env()
            .disk_manager
            .create_tmp_file("rows of a writer, grouped by table partition")?;
        let cannot = |e: &dyn std::fmt::Display| {
            DataFusionError::Execution(format!(
                "the writer could not spill its rows (is the temporary folder full?): {e}"
            ))
        };
        let mut writer = FileWriter::try_new(
            BufWriter::new(file.open_writer().map_err(|e| cannot(&e))?),
            &self.schema,
        )?;
        let spilled: Vec<RecordBatch> = self.held.drain(..oldest).collect();
        let freed: usize = self.sizes.drain(..oldest).sum();
        let mut messages: Vec<Vec<usize>> = vec![Vec::new(); self.places.len()];
        let mut written = 0usize;
        for (group, places) in self.places.iter_mut().enumerate() {
            // A group's places are in the order its rows came: those of
            // the spilled batches come first.
            let cut = places.partition_point(|&(b, _, _)| (b as usize) < oldest);
            for piece in pieces(&spilled, &places[..cut], self.batch_size) {
                // Copied text views point into the held batches' buffers:
                // the piece gets its own, or the file would hold them all.
                let piece = crate::dedup::compact(piece?)?;
                self.meters.bytes.add(piece.get_array_memory_size());
                writer.write(&piece).map_err(|e| cannot(&e))?;
                messages[group].push(written);
                written += 1;
            }
            places.drain(..cut);
            for place in places.iter_mut() {
                place.0 -= oldest as u32;
            }
            // What was counted for the places spilled goes too.
            if places.capacity() > 2 * places.len() {
                places.shrink_to_fit();
            }
        }
        writer.finish().map_err(|e| cannot(&e))?;
        let mut inner = writer
            .into_inner()
            .map_err(|e| cannot(&e))?
            .into_inner()
            .map_err(|e| cannot(&e))?;
        inner.finish().map_err(|e| cannot(&e))?;
        drop(spilled);
        self.reservation.shrink(freed.min(self.reservation.size()));
        self.meters.count.add(1);
        self.runs.push(Run { file, messages });
        Ok(())
    }

    /// Every row, a group at a time in the order of the key columns
    /// (ascending, NULLs first), in batches of up to the session's batch
    /// size; the batches of one group come one after another.
    pub fn finish(mut self) -> DfResult<Drain> {
        // Emitting empties the group table: whether it held any first.
        let any = !self.groups.is_empty();
        let values = self.groups.emit(EmitTo::All)?;
        let columns: Vec<SortColumn> = values
            .into_iter()
            .map(|values| SortColumn {
                values,
                options: Some(Default::default()),
            })
            .collect();
        let order = if any {
            lexsort_to_indices(&columns, None)?
                .values()
                .iter()
                .map(|&g| g as usize)
                .collect()
        } else {
            Vec::new()
        };
        let mut readers = Vec::with_capacity(self.runs.len());
        for run in &self.runs {
            let path = run.file.path().ok_or_else(|| {
                DataFusionError::NotImplemented(
                    "the writer spills to local temporary files only".into(),
                )
            })?;
            let file = std::fs::File::open(path).map_err(|e| {
                DataFusionError::Execution(format!(
                    "the writer could not read back its spill file {}: {e}",
                    path.display()
                ))
            })?;
            readers.push(FileReader::try_new(file, None)?);
        }
        Ok(Drain {
            order: order.into_iter(),
            pending: Vec::new().into_iter(),
            readers,
            gather: self,
        })
    }
}

/// The rows of `places` (runs in `held`), in order, in batches of up to
/// `batch_size` rows, each copied out of the runs it takes.
fn pieces<'a>(
    held: &'a [RecordBatch],
    places: &'a [Place],
    batch_size: usize,
) -> impl Iterator<Item = DfResult<RecordBatch>> + 'a {
    let mut runs = places
        .iter()
        .map(|&(b, start, rows)| (b as usize, start as usize, rows as usize));
    let mut current: Option<(usize, usize, usize)> = None;
    std::iter::from_fn(move || {
        let mut slices: Vec<RecordBatch> = Vec::new();
        let mut rows = 0;
        while rows < batch_size {
            let (b, start, n) = match current.take().or_else(|| runs.next()) {
                Some(run) => run,
                None => break,
            };
            let take = n.min(batch_size - rows);
            slices.push(held[b].slice(start, take));
            rows += take;
            if take < n {
                current = Some((b, start + take, n - take));
            }
        }
        if slices.is_empty() {
            return None;
        }
        let schema = slices[0].schema();
        Some(
            datafusion::arrow::compute::concat_batches(&schema, &slices)
                .map_err(DataFusionError::from),
        )
    })
}

/// A gather's rows, group by group ([`Gather::finish`]).
pub struct Drain {
    order: std::vec::IntoIter<usize>,
    /// The current group's batches not yet returned.
    pending: std::vec::IntoIter<RecordBatch>,
    readers: Vec<FileReader<std::fs::File>>,
    gather: Gather,
}

impl Drain {
    /// The batches of `group`: its messages in every spill file, then its
    /// rows held. Spilled messages are read one group at a time, so what
    /// is read back at once is one group's rows.
    fn group(&mut self, group: usize) -> DfResult<Vec<RecordBatch>> {
        let g = &mut self.gather;
        let time = g.meters.out.clone();
        let _timer = time.timer();
        let mut out = Vec::new();
        for (run, reader) in g.runs.iter().zip(self.readers.iter_mut()) {
            for &message in run.messages.get(group).map(Vec::as_slice).unwrap_or(&[]) {
                reader.set_index(message)?;
                match reader.next() {
                    Some(batch) => out.push(batch?),
                    None => {
                        return Err(DataFusionError::Internal(format!(
                            "the writer's spill file ended before message {message}"
                        )))
                    }
                }
            }
        }
        if let Some(places) = g.places.get(group) {
            for piece in pieces(&g.held, places, g.batch_size) {
                out.push(piece?);
            }
        }
        Ok(out)
    }
}

impl Iterator for Drain {
    type Item = DfResult<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.pending.next() {
                return Some(Ok(batch));
            }
            let group = self.order.next()?;
            match self.group(group) {
                Ok(batches) => self.pending = batches.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray, Int64Array, StringViewArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("day", DataType::Int64, true),
            Field::new("region", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    /// Whatever the memory (all held, some spilled, every batch spilled):
    /// every row comes out once, each group's rows one after another, the
    /// groups in key order (NULLs first), and the spills are counted.
    #[test]
    fn every_row_comes_out_once_grouped_in_key_order() {
        let mut rng = crate::testing::Rng::new(0x2545_f491_4f6c_dd1d);
        // Regions of varying length (inline in their views or not), NULL
        // days and regions, batches of varying size.
        let regions = [
            "east",
            "west-and-a-long-name",
            "",
            "north-north-north-north",
        ];
        let mut batches = Vec::new();
        let mut n = 0i64;
        while n < 60_000 {
            let rows = 1 + rng.below(3_000) as usize;
            let day: Vec<Option<i64>> = (0..rows)
                .map(|_| (rng.below(50) > 0).then(|| rng.below(40) as i64))
                .collect();
            let region: Vec<Option<&str>> = (0..rows)
                .map(|_| (rng.below(30) > 0).then(|| regions[rng.below(4) as usize]))
                .collect();
            let ns: Vec<i64> = (n..n + rows as i64).collect();
            n += rows as i64;
            batches.push(
                RecordBatch::try_new(
                    schema(),
                    vec![
                        Arc::new(Int64Array::from(day)),
                        Arc::new(StringViewArray::from(region)),
                        Arc::new(Int64Array::from(ns)),
                    ],
                )
                .unwrap(),
            );
        }
        // Spill files: none; a few (the oldest rows, some held at the end);
        // one per batch (no room at all).
        let all = batches.len();
        // Nothing in, nothing out.
        let ctx = SessionContext::new();
        let g = Gather::try_new(
            schema(),
            &["day".into(), "region".into()],
            ctx.task_ctx(),
            "test".into(),
            Meters::default(),
        )
        .unwrap();
        assert_eq!(g.finish().unwrap().count(), 0);
        for (limit, spills) in [(256 << 20, 0..1), (1 << 20, 2..all / 2), (0, all..all + 1)] {
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_pool(Arc::new(FairSpillPool::new(limit)))
                .build_arc()
                .unwrap();
            let ctx = SessionContext::new_with_config_rt(
                SessionConfig::new().with_batch_size(700),
                runtime,
            );
            let meters = Meters::default();
            let mut g = Gather::try_new(
                schema(),
                &["day".into(), "region".into()],
                ctx.task_ctx(),
                "test".into(),
                meters.clone(),
            )
            .unwrap();
            for b in &batches {
                g.push(b.clone()).unwrap();
            }
            let out: Vec<RecordBatch> = g.finish().unwrap().map(Result::unwrap).collect();
            assert!(
                spills.contains(&meters.count.value()),
                "limit {limit}: {} spills of {all} batches",
                meters.count.value()
            );
            let mut seen = vec![false; n as usize];
            let mut keys: Vec<(Option<i64>, Option<String>)> = Vec::new();
            for b in &out {
                assert!(b.num_rows() <= 700, "limit {limit}");
                let day = b.column(0).as_primitive::<Int64Type>();
                let region = b.column(1).as_string_view();
                let ns = b.column(2).as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    let n = ns.value(i) as usize;
                    assert!(!seen[n], "row {n} twice, limit {limit}");
                    seen[n] = true;
                    let key = (
                        day.is_valid(i).then(|| day.value(i)),
                        region.is_valid(i).then(|| region.value(i).to_string()),
                    );
                    if keys.last() != Some(&key) {
                        assert!(!keys.contains(&key), "{key:?} split, limit {limit}");
                        keys.push(key);
                    }
                }
            }
            assert!(seen.iter().all(|&s| s), "a row is missing, limit {limit}");
            // Option's order is NULLs first, as the writer's sort was.
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted, "limit {limit}");
            assert!(keys.len() > 150, "{}", keys.len());
        }
    }
}
