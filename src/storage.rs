//! Where bytes live. Turns a lake URI (a local folder or `s3://bucket/prefix`)
//! into an object store and URLs for tables and landing files, so every other
//! module reads and writes through `object_store` and S3 is never a second
//! code path. Owns credentials handling; must not know about tables or SQL.

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use url::Url;

use crate::error::{Error, Result};

/// This node's storage settings (`[storage]` of its config file). Plan
/// nodes that write on an executor reach the store with the settings of the
/// node they run on, so a plan never carries a credential.
static NODE_OPTIONS: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();

/// Sets [`node_options`] once, at the start of a command.
pub fn set_node_options(options: HashMap<String, String>) {
    let _ = NODE_OPTIONS.set(options);
}

pub fn node_options() -> HashMap<String, String> {
    NODE_OPTIONS.get().cloned().unwrap_or_default()
}

/// The lake root and the object store that serves it.
#[derive(Clone, Debug)]
pub struct Lake {
    root: Url,
    store: Arc<dyn ObjectStore>,
    root_path: Path,
    storage_options: HashMap<String, String>,
}

/// One landed file found by a source's glob.
#[derive(Clone, Debug)]
pub struct LandedFile {
    /// The name bronze records: relative to the lake root when the file is
    /// inside the lake, otherwise its full URI.
    pub name: String,
    pub store: Arc<dyn ObjectStore>,
    /// The store's URL (`s3://bucket`, `file://`): how another node finds it.
    pub store_url: String,
    pub location: Path,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    pub e_tag: Option<String>,
    /// Set for files on local disk, which are read without the object store.
    pub local_path: Option<std::path::PathBuf>,
}

impl Lake {
    /// Opens a lake. Local folders are created if missing (a new lake is an
    /// empty folder); object-store URIs are used as given.
    pub fn open(uri: &str, storage_options: HashMap<String, String>) -> Result<Self> {
        deltalake::aws::register_handlers(None);
        let root = parse_location(uri, true)?;
        let (store, root_path) = store_for(&root, &storage_options)?;
        Ok(Self {
            root,
            store,
            root_path,
            storage_options,
        })
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// URL of the folder `relative` (slash separated) under the lake root.
    pub fn url(&self, relative: &str) -> Url {
        let mut url = self.root.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{}/", relative.trim_matches('/')));
        url
    }

    /// Object-store path of `relative` under the lake root.
    pub fn path(&self, relative: &str) -> Path {
        let mut parts: Vec<String> = self
            .root_path
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        parts.extend(
            relative
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        Path::from_iter(parts)
    }

    /// Names of the immediate sub-folders of `relative`.
    pub async fn list_folders(&self, relative: &str) -> Result<Vec<String>> {
        let prefix = self.path(relative);
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.store_error(relative, e))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(String::from))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every file matching a source glob, sorted by name. The glob is relative
    /// to the lake root unless it is an absolute path or URI.
    pub async fn glob(&self, pattern: &str) -> Result<Vec<LandedFile>> {
        let (store, store_url, base_url, base_path, rel_pattern, inside) = if is_absolute(pattern) {
            let literal = literal_prefix(pattern);
            let base = parse_location(&literal, false)?;
            let (store, base_path) = store_for(&base, &self.storage_options)?;
            (
                store,
                store_of(&base),
                base.to_string(),
                base_path,
                pattern[literal.len()..].to_string(),
                false,
            )
        } else {
            let literal = literal_prefix(pattern);
            let base_path = self.path(&literal);
            (
                self.store.clone(),
                store_of(&self.root),
                String::new(),
                base_path,
                pattern.to_string(),
                true,
            )
        };
        let store_is_local = if inside {
            self.root.scheme() == "file"
        } else {
            pattern.starts_with('/') || pattern.starts_with("file://")
        };
        let matcher = glob::Pattern::new(rel_pattern.trim_start_matches('/'))
            .map_err(|e| Error::Usage(format!("invalid glob `{pattern}`: {e}")))?;
        let root_parts = if inside {
            self.root_path.parts().count()
        } else {
            base_path.parts().count()
        };
        let metas: Vec<ObjectMeta> = store
            .list(Some(&base_path))
            .try_collect()
            .await
            .map_err(|e| self.store_error(pattern, e))?;
        let mut files = Vec::new();
        for meta in metas {
            let rel: Vec<String> = meta
                .location
                .parts()
                .skip(root_parts)
                .map(|p| p.as_ref().to_string())
                .collect();
            let rel = rel.join("/");
            if !matcher.matches_with(
                &rel,
                glob::MatchOptions {
                    require_literal_separator: true,
                    ..Default::default()
                },
            ) {
                continue;
            }
            let name = if inside {
                rel
            } else {
                format!("{}/{}", base_url.trim_end_matches('/'), rel)
            };
            let local_path =
                (store_is_local).then(|| std::path::PathBuf::from(format!("/{}", meta.location)));
            files.push(LandedFile {
                local_path,
                name,
                store: store.clone(),
                store_url: store_url.clone(),
                location: meta.location,
                size: meta.size,
                last_modified: meta.last_modified,
                // A local file's ETag is its inode, modification time and
                // size: the inode changes when the lake is copied or
                // restored from a backup with its times kept, though the
                // file did not, so a local file is compared by size and
                // modification time alone (an object store's ETag follows
                // the content, and is kept).
                e_tag: if store_is_local { None } else { meta.e_tag },
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    fn store_error(&self, what: &str, e: object_store::Error) -> Error {
        Error::Lake {
            uri: format!("{}{}", self.root, what),
            message: format!(
                "{e}. Check that the location exists and that the credentials allow listing it."
            ),
        }
    }
}

fn is_absolute(pattern: &str) -> bool {
    pattern.starts_with('/') || pattern.contains("://")
}

/// The part of a glob before its first wildcard, cut back to a folder.
fn literal_prefix(pattern: &str) -> String {
    let cut = pattern.find(['*', '?', '[', '{']).unwrap_or(pattern.len());
    let head = &pattern[..cut];
    match head.rfind('/') {
        Some(i) => head[..=i].to_string(),
        None => String::new(),
    }
}

/// Parses a lake or file location into a URL. Local paths become absolute
/// `file://` URLs (created first when `create` is set).
pub fn parse_location(uri: &str, create: bool) -> Result<Url> {
    if uri.contains("://") {
        let mut url = Url::parse(uri).map_err(|e| Error::Lake {
            uri: uri.into(),
            message: e.to_string(),
        })?;
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        return Ok(url);
    }
    let path = FsPath::new(uri);
    if create {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::io(format!("create lake folder {uri}"), e))?;
    }
    let abs = if path.exists() {
        path.canonicalize()
            .map_err(|e| Error::io(format!("resolve {uri}"), e))?
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("current directory", e))?
            .join(path)
    };
    Url::from_directory_path(&abs).map_err(|_| Error::Lake {
        uri: uri.into(),
        message: "not a valid folder path".into(),
    })
}

/// Retries of transient store errors (5xx, throttling, resets, timeouts),
/// from the same keys Delta reads: `max_retries` (default 10),
/// `retry_timeout` (3m), `backoff_config.init_backoff` (100ms),
/// `backoff_config.max_backoff` (15s), `backoff_config.base` (2).
pub fn retry_config(
    url: &Url,
    options: &HashMap<String, String>,
) -> Result<object_store::RetryConfig> {
    let mut config = object_store::RetryConfig::default();
    let bad = |k: &str, v: &str| Error::Lake {
        uri: url.to_string(),
        message: format!(
            "storage option {k} = {v:?} is not valid (max_retries: a count; retry_timeout and \
             backoff_config.init_backoff/max_backoff: a duration like 30s or 500ms, at most \
             365 days; backoff_config.base: a number from 1 to 100)"
        ),
    };
    let duration = |k: &str, v: &str| crate::units::parse_duration(v).map_err(|_| bad(k, v));
    for (k, v) in options {
        match k.to_ascii_lowercase().as_str() {
            "max_retries" => config.max_retries = v.parse().map_err(|_| bad(k, v))?,
            "retry_timeout" => config.retry_timeout = duration(k, v)?,
            "backoff_config.init_backoff" => config.backoff.init_backoff = duration(k, v)?,
            "backoff_config.max_backoff" => config.backoff.max_backoff = duration(k, v)?,
            "backoff_config.base" => {
                // A growth factor per retry: finite, at least 1.
                config.backoff.base = v
                    .parse::<f64>()
                    .ok()
                    .filter(|b| b.is_finite() && (1.0..=100.0).contains(b))
                    .ok_or_else(|| bad(k, v))?
            }
            _ => {}
        }
    }
    Ok(config)
}

fn store_for(url: &Url, options: &HashMap<String, String>) -> Result<(Arc<dyn ObjectStore>, Path)> {
    if url.scheme() == "file" {
        // A store rooted at `/` so that paths from different globs share it.
        let store = object_store::local::LocalFileSystem::new();
        let path = Path::from_url_path(url.path()).map_err(|e| Error::Lake {
            uri: url.to_string(),
            message: e.to_string(),
        })?;
        return Ok((Arc::new(store), path));
    }
    if matches!(url.scheme(), "s3" | "s3a") {
        // The standard AWS chain (AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN,
        // AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, profiles via
        // AWS_PROFILE web identity, instance metadata), then the explicit
        // storage options.
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
        for (k, v) in options {
            if let Ok(key) = k
                .to_ascii_lowercase()
                .parse::<object_store::aws::AmazonS3ConfigKey>()
            {
                builder = builder.with_config(key, v);
            }
        }
        builder = builder.with_retry(retry_config(url, options)?);
        let store = builder.build().map_err(|e| Error::Lake {
            uri: url.to_string(),
            message: format!("{e}. Check AWS_REGION, AWS_ENDPOINT_URL and the credentials."),
        })?;
        let path = Path::from_url_path(url.path()).map_err(|e| Error::Lake {
            uri: url.to_string(),
            message: e.to_string(),
        })?;
        return Ok((Arc::new(store), path));
    }
    let (store, path) =
        object_store::parse_url_opts(url, options.iter()).map_err(|e| Error::Lake {
            uri: url.to_string(),
            message: format!("{e}. Check the URI scheme and the storage settings."),
        })?;
    Ok((Arc::from(store), path))
}

/// The object store a URL lives in, as `scheme://host[:port]` (`s3://bucket`,
/// `file://`): the key DataFusion's object store registry goes by.
pub fn store_of(url: &url::Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

/// The object-store path whose text is `text`, a path already encoded (a
/// snapshot's file, a landed file passed to a task): `day=North%2520America/
/// part-0.parquet` for the folder `day=North%20America`. `Path::from` would
/// encode its `%` once more and name a file that does not exist.
pub fn store_path(text: &str) -> object_store::path::Path {
    object_store::path::Path::parse(text).unwrap_or_else(|_| object_store::path::Path::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path's text names the file the path named; text that is not a
    /// valid path is taken as the file's name.
    #[test]
    fn store_paths_are_not_encoded_twice() {
        let folder = object_store::path::Path::from("t/day=North%20America/part-0.parquet");
        assert_eq!(folder.as_ref(), "t/day=North%2520America/part-0.parquet");
        assert_eq!(store_path(folder.as_ref()), folder);
        assert_eq!(store_path("t/a b/c.parquet").as_ref(), "t/a b/c.parquet");
        assert_eq!(store_path("t//c.parquet").as_ref(), "t/c.parquet");
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard_folder() {
        assert_eq!(literal_prefix("landing/orders/*.csv"), "landing/orders/");
        assert_eq!(literal_prefix("landing/stores.csv"), "landing/");
        assert_eq!(literal_prefix("*.csv"), "");
        assert_eq!(literal_prefix("landing/2024-*/x/*.csv"), "landing/");
    }

    #[tokio::test]
    async fn glob_matches_relative_names_without_crossing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap(), HashMap::new()).unwrap();
        for f in [
            "landing/orders/a.csv",
            "landing/orders/b.csv",
            "landing/orders/sub/c.csv",
            "landing/stores.csv",
        ] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x\n").unwrap();
        }
        let names: Vec<String> = lake
            .glob("landing/orders/*.csv")
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, vec!["landing/orders/a.csv", "landing/orders/b.csv"]);
        let names: Vec<String> = lake
            .glob("landing/orders/**/*.csv")
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(
            names,
            vec![
                "landing/orders/a.csv",
                "landing/orders/b.csv",
                "landing/orders/sub/c.csv"
            ]
        );
    }
}
