//! The local file system as the query engine's object store, reading small
//! ranges on the calling thread.
//!
//! `object_store`'s `LocalFileSystem` hands every read to tokio's blocking
//! pool: a thread hand-off (a futex wake, two context switches) for each
//! footer, page index and column chunk. A scan of a table partitioned by
//! day and region opens thousands of small files (1,825 per gold model of
//! the example), three reads each, and those hand-offs cost more than the
//! reads: a profile of such a scan had a fifth of its time in the
//! scheduler. Reads of up to [`INLINE_BYTES`] are done where they are
//! asked for (a `pread` from the page cache takes microseconds); larger
//! reads, and anything but a plain ranged read (preconditions, versions,
//! HEAD requests, whole objects), go to `LocalFileSystem` as before, as do
//! writes, listings and deletes. Errors on the inline path are never
//! reported from it: the request is retried through `LocalFileSystem`, so
//! callers see exactly its errors.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Reads up to this many bytes (all ranges of one request together) are
/// done on the calling thread.
pub const INLINE_BYTES: u64 = 2 << 20;

/// [`LocalFileSystem`] with small reads done inline.
#[derive(Debug)]
pub struct LocalReads {
    inner: LocalFileSystem,
    /// Requests answered inline.
    inline: std::sync::atomic::AtomicU64,
}

impl LocalReads {
    pub fn new() -> Self {
        Self {
            inner: LocalFileSystem::new(),
            inline: Default::default(),
        }
    }

    /// How many requests were answered on the calling thread.
    pub fn inline_reads(&self) -> u64 {
        self.inline.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// DataFusion's default registry with `file://` served by
    /// [`LocalReads`]: what every runtime of this project uses (a cluster
    /// node's keeps it for local files beside its own object stores).
    pub fn default_registry() -> datafusion::execution::object_store::DefaultObjectStoreRegistry {
        use datafusion::execution::object_store::{
            DefaultObjectStoreRegistry, ObjectStoreRegistry, ObjectStoreUrl,
        };
        let registry = DefaultObjectStoreRegistry::new();
        registry.register_store(
            ObjectStoreUrl::local_filesystem().as_ref(),
            Arc::new(Self::new()),
        );
        registry
    }

    /// `ranges` of the file at `location`, read here; `None` when the
    /// request should go to `LocalFileSystem` (too large, or anything
    /// failed: it reports the error its own way).
    fn read_inline(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> Option<(Vec<Bytes>, std::fs::Metadata)> {
        use std::os::unix::fs::FileExt;
        let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        // Empty and inverted ranges are LocalFileSystem's to answer (an
        // error for `get_range`).
        if total > INLINE_BYTES || ranges.iter().any(|r| r.end <= r.start) {
            return None;
        }
        let path = self.inner.path_to_filesystem(location).ok()?;
        let file = File::open(path).ok()?;
        let metadata = file.metadata().ok()?;
        if !metadata.is_file() || ranges.iter().any(|r| r.end > metadata.len()) {
            return None;
        }
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            file.read_exact_at(&mut buf, r.start).ok()?;
            out.push(Bytes::from(buf));
        }
        self.inline
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((out, metadata))
    }
}

impl Default for LocalReads {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LocalReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalReads({})", self.inner)
    }
}

/// What `LocalFileSystem` says of a file (its ETag scheme: inode, mtime in
/// microseconds and size, in hex), so both paths describe it alike.
fn object_meta(location: &Path, metadata: &std::fs::Metadata) -> ObjectMeta {
    use std::os::unix::fs::MetadataExt;
    let modified = metadata.modified().ok();
    let last_modified: DateTime<Utc> = modified.map(DateTime::from).unwrap_or_default();
    let modified = modified
        .and_then(|m| m.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default();
    ObjectMeta {
        location: location.clone(),
        last_modified,
        size: metadata.len(),
        e_tag: Some(format!(
            "{:x}-{:x}-{:x}",
            metadata.ino(),
            modified.as_micros(),
            metadata.len()
        )),
        version: None,
    }
}

#[async_trait]
impl ObjectStore for LocalReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        if let (true, Some(object_store::GetRange::Bounded(range))) = (plain, &options.range) {
            if let Some((mut bytes, metadata)) =
                self.read_inline(location, std::slice::from_ref(range))
            {
                let bytes = bytes.pop().unwrap_or_default();
                return Ok(GetResult {
                    payload: GetResultPayload::Stream(
                        futures::stream::once(async move { Ok(bytes) }).boxed(),
                    ),
                    meta: object_meta(location, &metadata),
                    range: range.clone(),
                    attributes: Default::default(),
                });
            }
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if let Some((bytes, _)) = self.read_inline(location, ranges) {
            return Ok(bytes);
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::local::LocalFileSystem;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt};

    use super::{LocalReads, INLINE_BYTES};

    /// Every read answers what `LocalFileSystem` answers: bytes, the
    /// object's description, and errors (missing file, range past the
    /// end), for small (inline) and large (delegated) ranges alike.
    #[tokio::test]
    async fn reads_equal_the_local_file_systems() {
        let dir = tempfile::tempdir().unwrap();
        let len = INLINE_BYTES as usize + 123_457;
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let file = dir.path().join("part-0.parquet");
        std::fs::write(&file, &data).unwrap();
        let at = Path::from_filesystem_path(&file).unwrap();
        let (ours, theirs) = (LocalReads::new(), LocalFileSystem::new());
        let len = len as u64;
        let ranges = [
            0..0,
            0..8,
            len - 8..len,
            100..5_000,
            7..INLINE_BYTES,
            0..INLINE_BYTES + 1,
            3..len,
        ];
        let text = |r: object_store::Result<bytes::Bytes>| r.map_err(|e| e.to_string());
        for r in &ranges {
            let before = ours.inline_reads();
            let got = text(ours.get_range(&at, r.clone()).await);
            assert_eq!(got, text(theirs.get_range(&at, r.clone()).await), "{r:?}");
            // Non-empty ranges up to INLINE_BYTES were read inline.
            let inline = !r.is_empty() && r.end - r.start <= INLINE_BYTES;
            assert_eq!(ours.inline_reads() - before, inline as u64, "{r:?}");
            if r.is_empty() {
                assert!(got.is_err(), "{r:?}");
            } else {
                assert_eq!(&got.unwrap()[..], &data[r.start as usize..r.end as usize]);
            }
        }
        // Several ranges in one request: inline when small together.
        for set in [&ranges[..4], &ranges[1..4], &ranges[3..6]] {
            let all = |r: object_store::Result<Vec<bytes::Bytes>>| r.map_err(|e| e.to_string());
            let got = all(ours.get_ranges(&at, set).await);
            assert_eq!(got, all(theirs.get_ranges(&at, set).await), "{set:?}");
            let expected: Vec<&[u8]> = set
                .iter()
                .map(|r| &data[r.start as usize..r.end as usize])
                .collect();
            let got = got.unwrap();
            assert_eq!(got.iter().map(|b| &b[..]).collect::<Vec<_>>(), expected);
        }
        // The object as both describe it (an inline read's, and a HEAD).
        let inline = ours
            .get_opts(
                &at,
                object_store::GetOptions {
                    range: Some((10..20).into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(inline.range, 10..20);
        assert_eq!(inline.meta, theirs.head(&at).await.unwrap());
        assert_eq!(inline.bytes().await.unwrap(), &data[10..20]);
        // Errors: the same text from both.
        let missing = Path::from_filesystem_path(dir.path())
            .unwrap()
            .join("missing.parquet");
        let past_end = len - 4..len + 4;
        let errors = |e: object_store::Error| e.to_string();
        assert_eq!(
            errors(ours.get_range(&missing, 0..4).await.unwrap_err()),
            errors(theirs.get_range(&missing, 0..4).await.unwrap_err())
        );
        assert!(matches!(
            ours.get_range(&missing, 0..4).await.unwrap_err(),
            object_store::Error::NotFound { .. }
        ));
        assert_eq!(
            errors(
                ours.get_ranges(&at, std::slice::from_ref(&past_end))
                    .await
                    .unwrap_err()
            ),
            errors(
                theirs
                    .get_ranges(&at, std::slice::from_ref(&past_end))
                    .await
                    .unwrap_err()
            )
        );
        // Writes, listings and deletes are LocalFileSystem's.
        let written = Path::from_filesystem_path(dir.path())
            .unwrap()
            .join("new.parquet");
        ours.put(&written, vec![1u8, 2, 3].into()).await.unwrap();
        assert_eq!(ours.get_range(&written, 1..3).await.unwrap(), &[2u8, 3][..]);
        assert_eq!(ours.head(&written).await.unwrap().size, 3);
        ours.delete(&written).await.unwrap();
        assert!(!dir.path().join("new.parquet").exists());
    }
}

#[cfg(test)]
mod registry_tests {
    /// Every runtime the project builds (sessions, cluster nodes) reads
    /// local files through [`super::LocalReads`].
    #[test]
    fn runtimes_read_local_files_inline() {
        use datafusion::execution::object_store::ObjectStoreUrl;
        let runtime = crate::session::bounded_runtime(1 << 30, 2)
            .build_arc()
            .unwrap();
        let store = runtime
            .object_store(ObjectStoreUrl::local_filesystem())
            .unwrap();
        assert!(store.to_string().starts_with("LocalReads("), "{store}");
        // A cluster node's runtime (its own registry, for its object stores).
        let node = crate::cluster::node_runtime(&Default::default(), 1 << 30).unwrap();
        let store = node
            .object_store(ObjectStoreUrl::local_filesystem())
            .unwrap();
        assert!(store.to_string().starts_with("LocalReads("), "{store}");
    }
}
