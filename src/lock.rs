//! One `lakehouse run` per lake at a time, fenced. Two runs writing at once
//! could both ingest the same new files (blind Delta appends do not
//! conflict), so a run first takes a lease: `<lake>/_lakehouse/run.lock`,
//! created with an atomic put-if-absent (local disk and S3 conditional writes
//! alike), renewed every 15 s, removed at the end. A second run exits with a
//! clear message or, with `--wait`, waits. A lock left by a crashed run is
//! taken over when its lease has expired (60 s without renewal) or, on the
//! same host, as soon as its process is gone.
//!
//! Every change to the lock is conditional on the version this run last
//! saw, so that after a lease expires (S3 throttled for a minute, a laptop
//! asleep) a run never overwrites or deletes another run's lock: on S3 a
//! conditional put on the object's ETag/version (`PutMode::Update`), on a
//! local disk a read-compare-write under an OS file lock
//! (`_lakehouse/run.lock.guard`). Taking over a stale lock is the same
//! compare-and-swap, so of two runs racing for it exactly one wins. A run that
//! loses its lease stops before its next commit and says why: every Delta
//! commit of the run passes [`RunLock`]'s fence first (`delta::FENCE`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::Lake;

const LEASE: Duration = Duration::from_secs(60);
const RENEW: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Holder {
    run_id: String,
    host: String,
    pid: u32,
    acquired_at: String,
    /// Milliseconds since the epoch.
    expires_at: i64,
}

/// This run's hold on the lease, shared with the renewer and the fence.
#[derive(Debug)]
struct Lease {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The OS-locked guard file of a local lake; `None` on object stores.
    guard: Option<std::path::PathBuf>,
    run_id: String,
    /// The lock's version as this run last wrote it (object stores).
    version: Mutex<Option<UpdateVersion>>,
    last_renewed: Mutex<Instant>,
    lost: AtomicBool,
    why: Mutex<Option<String>>,
}

pub struct RunLock {
    lease: Arc<Lease>,
    renewer: tokio::task::JoinHandle<()>,
}

/// The machine's name: `$HOSTNAME`, `/etc/hostname`, or `uname -n` (macOS).
fn host() -> String {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.trim().is_empty() {
            return h.trim().to_string();
        }
    }
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        if !h.trim().is_empty() {
            return h.trim().to_string();
        }
    }
    std::process::Command::new("uname")
        .arg("-n")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether a process of this host is alive: `/proc` on Linux, `kill -0`
/// elsewhere (macOS has no `/proc`, where every pid looked dead).
fn process_alive(pid: u32) -> bool {
    if std::path::Path::new("/proc/self").exists() {
        return std::path::Path::new(&format!("/proc/{pid}")).exists();
    }
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        // Unknown: assume alive, so a live run is never taken over.
        .unwrap_or(true)
}

fn holder(run_id: &str) -> Holder {
    let now = chrono::Utc::now();
    Holder {
        run_id: run_id.to_string(),
        host: host(),
        pid: std::process::id(),
        acquired_at: now.to_rfc3339(),
        expires_at: now.timestamp_millis() + LEASE.as_millis() as i64,
    }
}

fn payload(h: &Holder) -> PutPayload {
    PutPayload::from(serde_json::to_vec(h).unwrap_or_default())
}

fn lake_error(lake: &Lake, message: String) -> Error {
    Error::Lake {
        uri: lake.root().to_string(),
        message,
    }
}

/// The lock as stored: its holder (`None` if unreadable) and version.
async fn read(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> std::result::Result<Option<(Option<Holder>, UpdateVersion)>, object_store::Error> {
    match store.get(path).await {
        Ok(r) => {
            let version = UpdateVersion {
                e_tag: r.meta.e_tag.clone(),
                version: r.meta.version.clone(),
            };
            let bytes = r.bytes().await?;
            Ok(Some((
                serde_json::from_slice::<Holder>(&bytes).ok(),
                version,
            )))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs `f` holding the OS lock on the local guard file (no-op on object
/// stores), so that a read-compare-write of the lock is atomic among the
/// processes of this machine.
fn with_guard<T>(guard: &Option<std::path::PathBuf>, f: impl FnOnce() -> T) -> T {
    let Some(path) = guard else { return f() };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path);
    match file {
        Ok(file) => {
            let locked = file.lock();
            let out = f();
            if locked.is_ok() {
                let _ = file.unlock();
            }
            out
        }
        Err(_) => f(),
    }
}

impl Lease {
    /// Replaces the lock if it is still what this run last saw (`expected`
    /// holder on a local disk, `version` on an object store). `Ok(false)`
    /// when someone else changed it.
    async fn swap(
        &self,
        expected: &Option<Holder>,
        version: Option<UpdateVersion>,
        new: &Holder,
    ) -> std::result::Result<bool, object_store::Error> {
        if let Some(guard) = &self.guard {
            // Local disk: compare and write under the OS lock. The object
            // store calls are plain file operations, done synchronously here.
            let lock_file = self.lock_file();
            let guard = Some(guard.clone());
            let expected = expected.clone();
            let body = serde_json::to_vec(new).unwrap_or_default();
            return tokio::task::spawn_blocking(move || {
                with_guard(&guard, || {
                    let current = std::fs::read(&lock_file)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
                    if current != expected {
                        return Ok(false);
                    }
                    let tmp = lock_file.with_extension("lock.tmp");
                    std::fs::write(&tmp, &body)
                        .and_then(|_| std::fs::rename(&tmp, &lock_file))
                        .map(|_| true)
                        .map_err(|e| object_store::Error::Generic {
                            store: "local",
                            source: Box::new(e),
                        })
                })
            })
            .await
            .unwrap_or(Ok(false));
        }
        let Some(version) = version else {
            return Ok(false);
        };
        match self
            .store
            .put_opts(
                &self.path,
                payload(new),
                PutOptions {
                    mode: PutMode::Update(version),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(r) => {
                *self.version.lock().unwrap_or_else(|p| p.into_inner()) = Some(UpdateVersion {
                    e_tag: r.e_tag,
                    version: r.version,
                });
                Ok(true)
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn lock_file(&self) -> std::path::PathBuf {
        self.guard
            .as_ref()
            .map(|g| g.with_file_name("run.lock"))
            .unwrap_or_default()
    }

    fn mine(&self, h: &Option<Holder>) -> bool {
        h.as_ref().is_some_and(|h| h.run_id == self.run_id)
    }

    fn lose(&self, why: String) {
        tracing::error!("{why}");
        *self.why.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Extends the lease if the lock is still this run's.
    async fn renew(&self) {
        let current = match read(&self.store, &self.path).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the run lock to renew it");
                return;
            }
        };
        let Some((h, version)) = current else {
            self.lose("the run lock was removed by someone else".into());
            return;
        };
        if !self.mine(&h) {
            self.lose(lost_to(&h));
            return;
        }
        match self.swap(&h, Some(version), &holder(&self.run_id)).await {
            Ok(true) => {
                *self.last_renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now()
            }
            Ok(false) => {
                let now = read(&self.store, &self.path).await.ok().flatten();
                self.lose(lost_to(&now.and_then(|(h, _)| h)));
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the run lock"),
        }
    }

    /// Whether this run may still commit: not lost, and — when a renewal
    /// could be overdue, or always on a local disk where a read is free —
    /// the lock still names this run.
    async fn check(&self) -> Result<()> {
        let overdue = self
            .last_renewed
            .lock()
            .map(|t| t.elapsed() > LEASE - RENEW)
            .unwrap_or(true);
        if !self.lost.load(Ordering::SeqCst) && (overdue || self.guard.is_some()) {
            match read(&self.store, &self.path).await {
                Ok(Some((h, _))) if self.mine(&h) => {}
                Ok(Some((h, _))) => self.lose(lost_to(&h)),
                Ok(None) => self.lose("the run lock was removed by someone else".into()),
                Err(e) if overdue => self.lose(format!(
                    "the run lock could not be renewed for {} s and cannot be read ({e})",
                    (LEASE - RENEW).as_secs()
                )),
                Err(_) => {}
            }
        }
        if self.lost.load(Ordering::SeqCst) {
            let why = self
                .why
                .lock()
                .ok()
                .and_then(|w| w.clone())
                .unwrap_or_default();
            return Err(Error::LeaseLost(why));
        }
        Ok(())
    }
}

fn lost_to(h: &Option<Holder>) -> String {
    match h {
        Some(h) => format!(
            "this run lost the lake's lease to run {} on host {} (pid {}): it stops before \
             committing anything more. Its lease had expired (no renewal for {} s); run again \
             once that run has finished.",
            h.run_id,
            h.host,
            h.pid,
            LEASE.as_secs()
        ),
        None => "this run lost the lake's lease (the lock is unreadable)".into(),
    }
}

impl RunLock {
    pub async fn acquire(lake: &Lake, run_id: &str, wait: bool) -> Result<RunLock> {
        let store = lake.store();
        let path = lake.path(crate::catalog::LOCK_FILE);
        let guard = (lake.root().scheme() == "file")
            .then(|| lake.root().to_file_path().ok())
            .flatten()
            .map(|root| root.join(format!("{}.guard", crate::catalog::LOCK_FILE)));
        if let Some(g) = &guard {
            if let Some(dir) = g.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
            }
        }
        let lease = Arc::new(Lease {
            store: store.clone(),
            path: path.clone(),
            guard,
            run_id: run_id.to_string(),
            version: Mutex::new(None),
            last_renewed: Mutex::new(Instant::now()),
            lost: AtomicBool::new(false),
            why: Mutex::new(None),
        });
        let mut announced = false;
        loop {
            let me = holder(run_id);
            let put = store
                .put_opts(
                    &path,
                    payload(&me),
                    PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(r) => {
                    *lease.version.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(UpdateVersion {
                            e_tag: r.e_tag,
                            version: r.version,
                        });
                    break;
                }
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(lake_error(lake, format!("cannot take the run lock: {e}"))),
            }
            let Some((current, version)) = read(&store, &path)
                .await
                .map_err(|e| lake_error(lake, format!("cannot read the run lock: {e}")))?
            else {
                continue; // released meanwhile
            };
            let stale = match &current {
                None => true, // unreadable: a writer died mid-put
                Some(h) => {
                    h.expires_at < chrono::Utc::now().timestamp_millis()
                        || (h.host == me.host && !process_alive(h.pid))
                }
            };
            if stale {
                // Take it over only if it is still the stale lock we read:
                // of two runs racing for it, exactly one wins.
                match lease.swap(&current, Some(version), &me).await {
                    Ok(true) => {
                        tracing::warn!(holder = ?current, "took over the run lock of a run that is gone");
                        if lease.guard.is_some() {
                            *lease.version.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        }
                        break;
                    }
                    Ok(false) => continue,
                    Err(e) => {
                        return Err(lake_error(
                            lake,
                            format!("cannot take over the run lock: {e}"),
                        ))
                    }
                }
            }
            let Some(h) = current else { continue };
            let msg = format!(
                "another run holds this lake: run {} on host {} (pid {}), started {}",
                h.run_id, h.host, h.pid, h.acquired_at
            );
            if !wait {
                return Err(Error::LakeBusy(format!("lake location `{}`: {msg}. Wait for it to finish or pass --wait to queue behind it; if it crashed, its lock is taken over once its process is gone or its lease expires (60 s).", lake.root())));
            }
            if !announced {
                tracing::info!("{msg}; waiting for it to finish");
                announced = true;
            }
            tokio::time::sleep(POLL).await;
        }
        *lease.last_renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let renewer = {
            let lease = lease.clone();
            tokio::spawn(async move {
                while !lease.lost.load(Ordering::SeqCst) {
                    tokio::time::sleep(RENEW).await;
                    lease.renew().await;
                }
            })
        };
        Ok(RunLock { lease, renewer })
    }

    /// Whether another run took the lease while this one held it.
    pub fn lost(&self) -> bool {
        self.lease.lost.load(Ordering::SeqCst)
    }

    /// The check every commit of this run passes first.
    pub fn fence(&self) -> Arc<dyn crate::delta::Fence> {
        self.lease.clone()
    }

    /// Removes the lock if it is still this run's; a lock another run took
    /// over is left alone.
    pub async fn release(self) {
        self.renewer.abort();
        let lease = self.lease;
        let current = match read(&lease.store, &lease.path).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the run lock to remove it; the next run takes it over when it expires");
                return;
            }
        };
        let Some((h, _)) = current else { return };
        if !lease.mine(&h) {
            tracing::warn!("the run lock belongs to another run now; leaving it");
            return;
        }
        let (guard, store, path) = (lease.guard.clone(), lease.store.clone(), lease.path.clone());
        let run_id = lease.run_id.clone();
        let result = if guard.is_some() {
            let lock_file = lease.lock_file();
            tokio::task::spawn_blocking(move || {
                with_guard(&guard, || {
                    let current = std::fs::read(&lock_file)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
                    if current.is_some_and(|h| h.run_id == run_id) {
                        std::fs::remove_file(&lock_file).map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    }
                })
            })
            .await
            .unwrap_or(Ok(()))
        } else {
            store.delete(&path).await.map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not remove the run lock; the next run takes it over when it expires");
        }
    }
}

#[async_trait::async_trait]
impl crate::delta::Fence for Lease {
    async fn check(&self) -> Result<()> {
        Lease::check(self).await
    }
}
