//! One `lakehouse run` per lake at a time. Two runs writing at once could
//! both ingest the same new files (blind Delta appends do not conflict), so
//! a run first takes a lease: `<lake>/_lakehouse/run.lock`, created with an
//! atomic put-if-absent (local disk and S3 conditional writes alike), renewed
//! every 15 s, removed at the end. A second run exits with a clear message or,
//! with `--wait`, waits. A lock left by a crashed run is taken over when its
//! lease has expired (60 s without renewal) or, on the same host, as soon as
//! its process is gone.

use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
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

pub struct RunLock {
    lake: Lake,
    path: Path,
    renewer: tokio::task::JoinHandle<()>,
}

fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
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

impl RunLock {
    pub async fn acquire(lake: &Lake, run_id: &str, wait: bool) -> Result<RunLock> {
        let store = lake.store();
        let path = lake.path("_lakehouse/run.lock");
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
                Ok(_) => break,
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => {
                    return Err(Error::Lake {
                        uri: lake.root().to_string(),
                        message: format!("cannot take the run lock: {e}"),
                    })
                }
            }
            let current = match store.get(&path).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Holder>(&b).ok()),
                Err(object_store::Error::NotFound { .. }) => continue, // released meanwhile
                Err(e) => {
                    return Err(Error::Lake {
                        uri: lake.root().to_string(),
                        message: format!("cannot read the run lock: {e}"),
                    })
                }
            };
            let stale = match &current {
                None => true, // unreadable: a writer died mid-put
                Some(h) => {
                    h.expires_at < chrono::Utc::now().timestamp_millis()
                        || (h.host == me.host && !process_alive(h.pid))
                }
            };
            if stale {
                tracing::warn!(holder = ?current, "taking over the run lock of a run that is gone");
                // Delete only if it is still the stale lock we read.
                let again = store.get(&path).await.ok();
                let still = match again {
                    Some(r) => {
                        r.bytes()
                            .await
                            .ok()
                            .and_then(|b| serde_json::from_slice::<Holder>(&b).ok())
                            == current
                    }
                    None => false,
                };
                if still {
                    let _ = store.delete(&path).await;
                }
                continue;
            }
            let Some(h) = current else { continue }; // unreadable locks are stale, handled above
            let msg = format!(
                "another run holds this lake: run {} on host {} (pid {}), started {}",
                h.run_id, h.host, h.pid, h.acquired_at
            );
            if !wait {
                return Err(Error::Lake {
                    uri: lake.root().to_string(),
                    message: format!("{msg}. Wait for it to finish or pass --wait to queue behind it; if it crashed, its lock is taken over once its process is gone or its lease expires (60 s)."),
                });
            }
            if !announced {
                tracing::info!("{msg}; waiting for it to finish");
                announced = true;
            }
            tokio::time::sleep(POLL).await;
        }
        let renewer = {
            let store = store.clone();
            let path = path.clone();
            let run_id = run_id.to_string();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW).await;
                    if let Err(e) = store.put(&path, payload(&holder(&run_id))).await {
                        tracing::warn!(error = %e, "could not renew the run lock");
                    }
                }
            })
        };
        Ok(RunLock {
            lake: lake.clone(),
            path,
            renewer,
        })
    }

    pub async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self.lake.store().delete(&self.path).await {
            tracing::warn!(error = %e, "could not remove the run lock; the next run takes it over when it expires");
        }
    }
}
