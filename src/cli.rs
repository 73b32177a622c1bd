//! Command-line types and dispatch. Parsing here; work in the other modules.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::query::Format;
use crate::session::SessionOptions;
use crate::storage::Lake;

#[derive(Debug, Parser)]
#[command(
    name = "lakehouse",
    version,
    about = "Landed CSV -> bronze, silver and gold Delta Lake tables, with SQL models."
)]
pub struct Cli {
    /// The lake: a local folder or s3://bucket/prefix.
    #[arg(long, global = true, env = "LAKEHOUSE_LAKE", default_value = "lake")]
    pub lake: String,

    /// Memory the query engine may use before spilling to disk, e.g. 2G or 512M.
    #[arg(long, global = true, env = "LAKEHOUSE_MEMORY_LIMIT", default_value = "2G", value_parser = parse_size)]
    pub memory_limit: usize,

    /// Config file with a `[serve]` table [default: ./lakehouse.toml if present].
    #[arg(long, global = true, env = "LAKEHOUSE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log lines on stderr: `text` (coloured on a terminal unless NO_COLOR
    /// is set) or `json`, one object per line, for log shippers.
    #[arg(
        long,
        global = true,
        env = "LAKEHOUSE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LineageFormat {
    Text,
    Json,
    Dot,
    Mermaid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a command ended, as its exit code (the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; for `run`, every source and model succeeded.
    Success,
    /// 1: the run ran, but a source, a file or a model failed (the others
    /// still ran and committed).
    Failed,
    /// 2: the command could not start: bad pipeline, bad lake, bad flag.
    CouldNotStart,
    /// 3: another run holds the lake (taken at start without `--wait`, or
    /// its lease was taken while this run was stalled): retry later.
    LakeBusy,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::CouldNotStart => 2,
            Exit::LakeBusy => 3,
        }
    }

    pub fn from_error(e: &Error) -> Exit {
        match e {
            Error::LakeBusy(_) | Error::LeaseLost(_) => Exit::LakeBusy,
            _ => Exit::CouldNotStart,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest new landing files into bronze, then run every model into silver and gold.
    Run(RunArgs),
    /// The run history: the last runs, or one run's steps, rules and errors.
    Runs {
        /// How many runs to list, newest first.
        #[arg(long, default_value_t = 20)]
        last: usize,
        #[arg(long, global = true, value_enum, default_value = "table")]
        format: Format,
        #[command(subcommand)]
        show: Option<RunsCommand>,
    },
    /// Compact small files into files of about --target-size (or Z-order
    /// them), one commit per table; safe beside a running `run`.
    Optimize {
        /// Tables as `layer.name` [default: every table].
        tables: Vec<String>,
        /// Only these partitions: comparisons of partition columns joined by
        /// AND, e.g. "order_date >= '2025-03-01' AND region = 'north'".
        #[arg(long = "where", value_name = "FILTER")]
        filter: Option<String>,
        /// Rewrite the files Z-ordered by these columns (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "COLS")]
        zorder: Vec<String>,
        /// Size of the files written, e.g. 128M.
        #[arg(long, default_value = "128M", value_parser = parse_size)]
        target_size: usize,
    },
    /// Delete files no version within the retention needs (replaced
    /// files, and files failed or killed runs left), older than it.
    Vacuum {
        /// Tables as `layer.name` [default: every table].
        tables: Vec<String>,
        /// Keep every file a version of the last DURATION needs (at least 1h).
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        retain: std::time::Duration,
        /// List what would be deleted, and how many bytes, without deleting.
        #[arg(long)]
        dry_run: bool,
    },
    /// A table's versions, newest first: when, the operation, the run that
    /// made it and its metrics.
    History {
        /// The table, as `layer.name`.
        table: String,
        /// How many versions to list.
        #[arg(long, default_value_t = 20)]
        last: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Which columns each table's columns are computed from (read off the
    /// models' SQL with DataFusion's planner), down to bronze and the
    /// landing files.
    Lineage {
        /// The pipeline folder.
        #[arg(long, env = "LAKEHOUSE_PIPELINE", default_value = "sql")]
        pipeline: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: LineageFormat,
        /// Only this table (`gold.daily_region_sales`) or column
        /// (`gold.daily_region_sales.revenue`) and what it comes from.
        table: Option<String>,
    },
    /// Run one SQL query over bronze.*, silver.*, gold.*, quarantine.* and system.*.
    Query {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Run the query on a Ballista cluster: df://HOST:PORT of its
        /// scheduler, or `standalone` for one started in this process.
        #[arg(
            long,
            env = "LAKEHOUSE_CLUSTER",
            value_name = "df://HOST:PORT|standalone"
        )]
        cluster: Option<String>,
        /// The query.
        sql: String,
    },
    /// List every table with its version, rows, partition columns, files and size.
    Tables,
    /// Rewrite a table's Delta symlink manifests (`_symlink_format_manifest/`)
    /// from its latest version, e.g. `gold.daily_region_sales`.
    Manifest {
        /// The table, as `layer.name`.
        table: String,
    },
    /// Answer SQL over every table on Postgres wire, Arrow Flight SQL and HTTP (read-only).
    Serve(ServeArgs),
    /// Run a Ballista scheduler for `--cluster` runs and queries (this binary
    /// is every node of the cluster).
    Scheduler {
        /// Address to listen on; port 0 picks a free one (printed at start).
        #[arg(
            long,
            env = "LAKEHOUSE_SCHEDULER_BIND",
            default_value = "127.0.0.1:50050"
        )]
        bind: std::net::SocketAddr,
        /// How long an executor may stay silent before it is considered
        /// lost and its tasks run elsewhere (executors beat every 5 s).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        executor_timeout: std::time::Duration,
    },
    /// Run a Ballista executor that takes tasks from a scheduler.
    Executor {
        /// The scheduler, as df://HOST:PORT.
        #[arg(long, env = "LAKEHOUSE_SCHEDULER")]
        scheduler: String,
        /// Address other nodes fetch this executor's results from (Arrow
        /// Flight); port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: std::net::SocketAddr,
        /// Address of the executor's gRPC service; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:0")]
        grpc_bind: std::net::SocketAddr,
        /// Tasks run at once [default: the number of cores].
        #[arg(long)]
        slots: Option<usize>,
        /// Folder for shuffle files [default: a temporary folder].
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// One run's record, steps and expectations.
    Show {
        /// The run's id (or a unique start of it), or `last`.
        run_id: String,
    },
}

/// What `lakehouse run` takes.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline folder (bronze/, silver/, gold/).
    #[arg(long, env = "LAKEHOUSE_PIPELINE", default_value = "sql")]
    pub pipeline: PathBuf,
    /// If another run holds the lake, wait for it instead of exiting.
    #[arg(long)]
    pub wait: bool,
    /// Run only this model (`silver.orders`), or it and everything
    /// downstream (`silver.orders+`). Repeatable. Sources are always ingested.
    #[arg(long, value_name = "MODEL")]
    pub select: Vec<String>,
    /// Rebuild the models from their inputs (no skipping; merge, append
    /// and replace_partitions models are replaced whole).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub full_refresh: bool,
    /// Backfill: recompute the selected models' rows dated from this day
    /// (YYYY-MM-DD, included) and replace exactly those date partitions.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub from: Option<chrono::NaiveDate>,
    /// Backfill up to this day (YYYY-MM-DD, included); with --from or alone.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub to: Option<chrono::NaiveDate>,
    /// Ingest this landed file again although it was ingested before
    /// (its name as bronze records it, e.g. landing/orders/day1.csv),
    /// replacing its earlier rows in bronze and in the reject table in
    /// the same commit. Repeatable. Models downstream are rebuilt.
    #[arg(long, value_name = "FILE")]
    pub reingest: Vec<String>,
    /// Run the models on a Ballista cluster: df://HOST:PORT of its
    /// scheduler, or `standalone` for one started in this process.
    /// Executors write the files; this process commits them.
    #[arg(
        long,
        env = "LAKEHOUSE_CLUSTER",
        value_name = "df://HOST:PORT|standalone"
    )]
    pub cluster: Option<String>,
    /// With --cluster: how long one model's job may run on the cluster
    /// before it is cancelled and the model fails, committing nothing
    /// (a job whose lost tasks are never run again would otherwise hold
    /// the run and the lake's lease forever).
    #[arg(
        long,
        env = "LAKEHOUSE_STAGE_TIMEOUT",
        default_value = "4h",
        value_parser = crate::units::parse_duration
    )]
    pub stage_timeout: std::time::Duration,
    /// Print the run's summary as one line of JSON on stdout (the
    /// readable summary goes to stderr): per step its status, strategy,
    /// rows in/written/rejected/quarantined, duplicates, rules, Delta
    /// version and seconds.
    #[arg(long)]
    pub json: bool,
    /// Write the run's metrics to this file in Prometheus text format,
    /// replaced atomically (for node_exporter's textfile collector).
    #[arg(long, env = "LAKEHOUSE_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// Settings of `lakehouse serve`. Each comes from its flag, else its
/// environment variable, else the `[serve]` table of the config file, else
/// the default shown.
#[derive(Debug, clap::Args, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Postgres wire address, or `off` [default: 127.0.0.1:5432].
    #[arg(long, env = "LAKEHOUSE_PG_ADDR")]
    pub pg_addr: Option<String>,
    /// Arrow Flight SQL address, or `off` [default: 127.0.0.1:50051].
    #[arg(long, env = "LAKEHOUSE_FLIGHT_ADDR")]
    pub flight_addr: Option<String>,
    /// HTTP address, or `off` [default: 127.0.0.1:8080].
    #[arg(long, env = "LAKEHOUSE_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// The user clients log in as [default: lakehouse].
    #[arg(long, env = "LAKEHOUSE_USER")]
    pub user: Option<String>,
    /// The password clients log in with. Without one, only loopback addresses are served.
    #[arg(long, env = "LAKEHOUSE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A fixed bearer token for HTTP and Flight SQL (besides the ones the Flight handshake issues).
    #[arg(long, env = "LAKEHOUSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate for TLS on Postgres wire (with --tls-key).
    #[arg(long, env = "LAKEHOUSE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on Postgres wire.
    #[arg(long, env = "LAKEHOUSE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Longest a query may run, waiting for a slot included, e.g. 30s, 5m [default: 5m].
    #[arg(long, env = "LAKEHOUSE_QUERY_TIMEOUT")]
    pub query_timeout: Option<String>,
    /// Memory one query may use before it must spill or fail, e.g. 512M [default: 1G].
    #[arg(long, env = "LAKEHOUSE_QUERY_MEMORY")]
    pub query_memory: Option<String>,
    /// Queries running at once; more wait for a slot [default: 16].
    #[arg(long, env = "LAKEHOUSE_MAX_QUERIES")]
    pub max_queries: Option<usize>,
    /// A bearer token GET /metrics asks for [default: none, /metrics is open].
    #[arg(long, env = "LAKEHOUSE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

impl ServeArgs {
    /// Fills what the flags and environment left open from `other` (the config file).
    fn or(self, other: ServeArgs) -> ServeArgs {
        ServeArgs {
            pg_addr: self.pg_addr.or(other.pg_addr),
            flight_addr: self.flight_addr.or(other.flight_addr),
            http_addr: self.http_addr.or(other.http_addr),
            user: self.user.or(other.user),
            password: self.password.or(other.password),
            token: self.token.or(other.token),
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            query_timeout: self.query_timeout.or(other.query_timeout),
            query_memory: self.query_memory.or(other.query_memory),
            max_queries: self.max_queries.or(other.max_queries),
            metrics_token: self.metrics_token.or(other.metrics_token),
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    serve: ServeArgs,
    /// Object-store settings, passed to the lake's store and to Delta: S3
    /// keys such as `aws_endpoint_url`, `aws_region`, `aws_allow_http`, and
    /// retries: `max_retries`, `retry_timeout`, `backoff_config.init_backoff`,
    /// `backoff_config.max_backoff`.
    #[serde(default)]
    storage: std::collections::HashMap<String, String>,
}

/// Reads the config file: `--config`, else `lakehouse.toml` in the current
/// folder if there is one.
fn load_config(path: Option<&std::path::Path>) -> Result<ConfigFile> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from("lakehouse.toml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConfigFile::default())
        }
        Err(e) => return Err(Error::io(format!("read config file {}", path.display()), e)),
    };
    toml::from_str(&text).map_err(|e| Error::PipelineFile {
        file: path.clone(),
        line: e
            .span()
            .map(|s| text[..s.start].lines().count().max(1))
            .unwrap_or(1),
        message: e.message().to_string(),
    })
}

/// `30s`, `5m`, `500ms`, `1h`, or plain seconds.
pub use crate::units::parse_duration;
use crate::units::parse_positive_size as parse_size;

fn parse_date(s: &str) -> std::result::Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a date like 2025-03-01 (YYYY-MM-DD)"))
}

/// Runs the command; an error means it could not start (or, for `run`,
/// that the lake was busy).
pub async fn dispatch(cli: Cli) -> Result<Exit> {
    let options = SessionOptions {
        memory_limit: cli.memory_limit,
        ..Default::default()
    };
    let mut config = load_config(cli.config.as_deref())?;
    crate::storage::set_node_options(config.storage.clone());
    match cli.command {
        Command::Run(args) => {
            let json = args.json;
            let outcome = run_command(&cli.lake, &config, options, args).await;
            if let (Err(e), true) = (&outcome, json) {
                let code = Exit::from_error(e).code();
                println!("{}", crate::report::json_not_started(&e.to_string(), code));
            }
            outcome
        }
        Command::Runs { last, format, show } => {
            let lake = open_existing(&cli.lake, &config)?;
            let (ctx, _) = crate::session::build(&lake, &options).await?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match show {
                None => crate::runs::list(&ctx, last, format, &mut out).await?,
                Some(RunsCommand::Show { run_id }) => {
                    crate::runs::show(&ctx, &run_id, format, &mut out).await?
                }
            }
            Ok(Exit::Success)
        }
        Command::Query {
            format,
            cluster,
            sql,
        } => {
            let lake = open_existing(&cli.lake, &config)?;
            let options = SessionOptions {
                cluster: cluster.as_deref().map(Cluster::parse).transpose()?,
                ..options
            };
            let (ctx, _) = crate::session::build(&lake, &options).await?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            crate::query::run_query(&ctx, &sql, format, &mut out).await?;
            Ok(Exit::Success)
        }
        Command::Manifest { table } => {
            let lake = open_existing(&cli.lake, &config)?;
            let (schema, name) = table.split_once('.').unwrap_or(("", &table));
            let folder = crate::catalog::parse_table_name(name)
                .ok()
                .flatten()
                .filter(|(base, at)| *base == name && *at == crate::delta::At::Latest)
                .and_then(|_| crate::catalog::table_folder(schema, name))
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "`{table}` is not a table name: give `layer.name`, e.g. gold.daily_region_sales"
                    ))
                })?;
            let delta = crate::delta::open(&lake.url(&folder), lake.storage_options())
                .await?
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "there is no table {table}; `lakehouse tables` lists them"
                    ))
                })?;
            let n = crate::manifest::regenerate(&delta).await?;
            println!(
                "{table}: wrote {n} manifest{} for version {}",
                if n == 1 { "" } else { "s" },
                delta.version().unwrap_or(0)
            );
            Ok(Exit::Success)
        }
        Command::Scheduler {
            bind,
            executor_timeout,
        } => {
            let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
                Error::io(
                    format!("listen on {bind} (move it with --bind or LAKEHOUSE_SCHEDULER_BIND)"),
                    e,
                )
            })?;
            let addr = listener
                .local_addr()
                .map_err(|e| Error::io("scheduler address", e))?;
            println!("lakehouse scheduler listening on df://{addr}");
            crate::cluster::run_scheduler(
                listener,
                config.storage.clone(),
                cli.memory_limit,
                executor_timeout,
            )
            .await?;
            Ok(Exit::Success)
        }
        Command::Executor {
            scheduler,
            bind,
            grpc_bind,
            slots,
            work_dir,
        } => {
            let settings = crate::cluster::ExecutorSettings {
                scheduler: scheduler_address(&scheduler)?,
                bind,
                grpc_bind,
                slots: slots.unwrap_or(options.target_partitions),
                work_dir,
            };
            crate::cluster::run_executor(settings, config.storage.clone(), cli.memory_limit)
                .await?;
            Ok(Exit::Success)
        }
        Command::Optimize {
            tables,
            filter,
            zorder,
            target_size,
        } => {
            let lake = open_existing(&cli.lake, &config)?;
            let options = crate::maintain::OptimizeOptions {
                filters: filter
                    .as_deref()
                    .map(crate::maintain::parse_where)
                    .transpose()?
                    .unwrap_or_default(),
                zorder,
                target_size: target_size as u64,
            };
            let named = !tables.is_empty();
            let mut failed = false;
            for table in crate::maintain::tables(&lake, &tables).await? {
                match crate::maintain::optimize(&lake, &table, &options, None).await {
                    Ok(r) => match (&r.skipped, r.version) {
                        (Some(why), _) if named => {
                            eprintln!("error: {}: not optimized: {why}", r.table);
                            failed = true;
                        }
                        (Some(_), _) => {}
                        (None, Some(v)) => println!(
                            "{}: {} files ({}) rewritten as {} ({}) in {}; version {} -> {v}",
                            r.table,
                            r.files_removed,
                            crate::maintain::human_bytes(r.bytes_removed),
                            r.files_added,
                            crate::maintain::human_bytes(r.bytes_added),
                            crate::text::plural(r.partitions, "partition"),
                            r.version_before,
                        ),
                        (None, None) => println!(
                            "{}: already compact (version {})",
                            r.table, r.version_before
                        ),
                    },
                    Err(e) => {
                        eprintln!("error: {}: {e}", table.name);
                        failed = true;
                    }
                }
            }
            Ok(if failed { Exit::Failed } else { Exit::Success })
        }
        Command::Vacuum {
            tables,
            retain,
            dry_run,
        } => {
            let lake = open_existing(&cli.lake, &config)?;
            let mut failed = false;
            let (mut files, mut bytes) = (0usize, 0u64);
            for table in crate::maintain::tables(&lake, &tables).await? {
                match crate::maintain::vacuum(&lake, &table, retain, dry_run).await {
                    Ok(r) => {
                        if dry_run {
                            for f in &r.files {
                                println!("{}: would delete {f}", r.table);
                            }
                        }
                        if !r.files.is_empty() || !tables.is_empty() {
                            println!(
                                "{}: {} {} ({})",
                                r.table,
                                if dry_run { "would delete" } else { "deleted" },
                                crate::text::plural(r.files.len() as u64, "file"),
                                crate::maintain::human_bytes(r.bytes)
                            );
                        }
                        files += r.files.len();
                        bytes += r.bytes;
                    }
                    Err(e @ Error::Usage(_)) => return Err(e),
                    Err(e) => {
                        eprintln!("error: {}: {e}", table.name);
                        failed = true;
                    }
                }
            }
            println!(
                "vacuum {}: {} ({}) older than {} and needed by no version since",
                if dry_run { "dry run" } else { "done" },
                crate::text::plural(files as u64, "file"),
                crate::maintain::human_bytes(bytes),
                humantime::format_duration(retain)
            );
            Ok(if failed { Exit::Failed } else { Exit::Success })
        }
        Command::History {
            table,
            last,
            format,
        } => {
            let lake = open_existing(&cli.lake, &config)?;
            let table = crate::maintain::TableRef::parse(&table)?;
            let versions = crate::maintain::history(&lake, &table, last).await?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            crate::maintain::print_history(&versions, format, &mut out)?;
            Ok(Exit::Success)
        }
        Command::Lineage {
            pipeline,
            format,
            table,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let lake = Lake::open(&cli.lake, config.storage.clone())?;
            let (ctx, _) = crate::session::build(&lake, &options).await?;
            let all = crate::lineage::lineage(&ctx, &pipeline).await?;
            let tables = crate::lineage::upstream(all, table.as_deref())?;
            match format {
                LineageFormat::Text => print!("{}", crate::lineage::to_text(&tables)),
                LineageFormat::Json => println!("{}", crate::lineage::to_json(&tables)),
                LineageFormat::Dot => print!("{}", crate::lineage::to_dot(&tables)),
                LineageFormat::Mermaid => print!("{}", crate::lineage::to_mermaid(&tables)),
            }
            Ok(Exit::Success)
        }
        Command::Tables => {
            let lake = open_existing(&cli.lake, &config)?;
            print!("{}", crate::query::tables(&lake).await?);
            Ok(Exit::Success)
        }
        Command::Serve(args) => {
            let args = args.or(std::mem::take(&mut config.serve));
            let usage = Error::Usage;
            let limits = crate::limits::QueryLimits {
                timeout: parse_duration(args.query_timeout.as_deref().unwrap_or("5m"))
                    .map_err(usage)?,
                memory: parse_size(args.query_memory.as_deref().unwrap_or("1G")).map_err(usage)?,
                max_concurrent: args.max_queries.unwrap_or(16).max(1),
                observer: None,
            };
            let options = SessionOptions {
                limits: Some(limits),
                ..options
            };
            let lake = open_existing(&cli.lake, &config)?;
            let engine = crate::serve::Engine::new(lake, &options).await?;
            crate::serve::pg::install_catalog(&engine.ctx).await?;
            let auth = crate::serve::Auth::new(
                args.user.unwrap_or_else(|| "lakehouse".into()),
                args.password,
                args.token,
            )
            .with_metrics_token(args.metrics_token);
            let serve_options = crate::serve::ServeOptions {
                pg_addr: Some(args.pg_addr.unwrap_or_else(|| "127.0.0.1:5432".into())),
                flight_addr: Some(args.flight_addr.unwrap_or_else(|| "127.0.0.1:50051".into())),
                http_addr: Some(args.http_addr.unwrap_or_else(|| "127.0.0.1:8080".into())),
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
            };
            crate::serve::serve(
                std::sync::Arc::new(engine),
                std::sync::Arc::new(auth),
                serve_options,
            )
            .await?;
            Ok(Exit::Success)
        }
    }
}

async fn run_command(
    lake_uri: &str,
    config: &ConfigFile,
    options: SessionOptions,
    args: RunArgs,
) -> Result<Exit> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    let options = SessionOptions {
        cluster: args.cluster.as_deref().map(Cluster::parse).transpose()?,
        stage_timeout: args.stage_timeout,
        ..options
    };
    if let (Some(f), Some(t)) = (args.from, args.to) {
        if f > t {
            return Err(Error::Usage(format!(
                "--from {f} is after --to {t}: give the earlier day first"
            )));
        }
    }
    let refresh = if args.full_refresh {
        crate::model::Refresh::Full
    } else if args.from.is_some() || args.to.is_some() {
        crate::model::Refresh::Range(crate::model::DateRange {
            from: args.from,
            to: args.to,
        })
    } else {
        crate::model::Refresh::Auto
    };
    let run_options = crate::runner::RunOptions {
        select: args.select,
        refresh,
        reingest: args.reingest,
    };
    crate::runner::selected(&pipeline, &run_options.select)?;
    let lake = Lake::open(lake_uri, config.storage.clone())?;
    let run_id = crate::runner::new_run_id();
    let lock = crate::lock::RunLock::acquire(&lake, &run_id, args.wait).await?;
    let report = crate::delta::FENCE
        .scope(
            lock.fence(),
            crate::runner::run(
                &lake,
                &pipeline,
                &options,
                &run_id,
                &run_options,
                &crate::console::Console::default(),
            ),
        )
        .await;
    let lost = lock.lost();
    lock.release().await;
    let report = report?;
    let exit = if lost {
        Exit::LakeBusy
    } else if report.succeeded() {
        Exit::Success
    } else {
        Exit::Failed
    };
    let summary = crate::console::summary(&report);
    if args.json {
        eprint!("{summary}");
        println!("{}", crate::report::json(&report, exit.code()));
    } else {
        print!("{summary}");
    }
    if let Some(path) = &args.metrics_file {
        let local = SessionOptions {
            cluster: None,
            ..options
        };
        let last_success = match crate::session::build(&lake, &local).await {
            Ok((ctx, _)) => crate::report::last_success(&ctx, &report).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the run history for the metrics file");
                vec![]
            }
        };
        let text = crate::report::prometheus(&report, exit.code(), &last_success);
        if let Err(e) = crate::prom::replace_file(path, &text) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics file");
            eprintln!(
                "warning: cannot write the metrics file {}: {e}",
                path.display()
            );
        }
    }
    Ok(exit)
}

/// The scheduler's socket address from `df://HOST:PORT`.
fn scheduler_address(text: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let Cluster::Remote(url) = Cluster::parse(text)? else {
        return Err(Error::Usage(
            "--scheduler: give the scheduler as df://HOST:PORT; `standalone` is for --cluster"
                .into(),
        ));
    };
    let host_port = url.trim_start_matches("http://");
    host_port
        .to_socket_addrs()
        .map_err(|e| {
            Error::Usage(format!(
                "--scheduler {text}: cannot resolve {host_port}: {e}"
            ))
        })?
        .next()
        .ok_or_else(|| Error::Usage(format!("--scheduler {text}: {host_port} has no address")))
}

fn open_existing(uri: &str, config: &ConfigFile) -> Result<Lake> {
    if !uri.contains("://") && !std::path::Path::new(uri).is_dir() {
        return Err(Error::Lake { uri: uri.into(), message: "no such folder. Run `lakehouse run` first, or pass --lake pointing at an existing lake.".into() });
    }
    Lake::open(uri, config.storage.clone())
}
