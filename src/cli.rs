//! Command-line types and dispatch. Parsing here; work in the other modules.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest new landing files into bronze, then run every model into silver and gold.
    Run {
        /// The pipeline folder (bronze/, silver/, gold/).
        #[arg(long, env = "LAKEHOUSE_PIPELINE", default_value = "sql")]
        pipeline: PathBuf,
        /// If another run holds the lake, wait for it instead of exiting.
        #[arg(long)]
        wait: bool,
        /// Run only this model (`silver.orders`), or it and everything
        /// downstream (`silver.orders+`). Repeatable. Sources are always ingested.
        #[arg(long, value_name = "MODEL")]
        select: Vec<String>,
        /// Rebuild the models from their inputs (no skipping; merge, append
        /// and replace_partitions models are replaced whole).
        #[arg(long)]
        full_refresh: bool,
    },
    /// Run one SQL query over bronze.*, silver.*, gold.*, quarantine.* and system.*.
    Query {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// The query.
        sql: String,
    },
    /// List every table with its version, rows, partition columns, files and size.
    Tables,
}

fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1usize << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim()
        .parse::<f64>()
        .map(|n| (n * mult as f64) as usize)
        .map_err(|_| format!("`{s}` is not a size like 2G, 512M or 1048576"))
}

/// Runs the command; `Ok(false)` means it ran but the job failed.
pub async fn dispatch(cli: Cli) -> Result<bool> {
    let options = SessionOptions {
        memory_limit: cli.memory_limit,
        ..Default::default()
    };
    match cli.command {
        Command::Run {
            pipeline,
            wait,
            select,
            full_refresh,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let run_options = crate::runner::RunOptions {
                select,
                full_refresh,
            };
            crate::runner::selected(&pipeline, &run_options.select)?;
            let lake = Lake::open(&cli.lake, Default::default())?;
            let run_id = crate::runner::new_run_id();
            let lock = crate::lock::RunLock::acquire(&lake, &run_id, wait).await?;
            let report =
                crate::runner::run(&lake, &pipeline, &options, &run_id, &run_options).await;
            lock.release().await;
            let report = report?;
            print!("{}", crate::runner::summary(&report));
            Ok(report.succeeded())
        }
        Command::Query { format, sql } => {
            let lake = open_existing(&cli.lake)?;
            let (ctx, _) = crate::session::build(&lake, &options).await?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            crate::query::run_query(&ctx, &sql, format, &mut out).await?;
            Ok(true)
        }
        Command::Tables => {
            let lake = open_existing(&cli.lake)?;
            print!("{}", crate::query::tables(&lake).await?);
            Ok(true)
        }
    }
}

fn open_existing(uri: &str) -> Result<Lake> {
    if !uri.contains("://") && !std::path::Path::new(uri).is_dir() {
        return Err(Error::Lake { uri: uri.into(), message: "no such folder. Run `lakehouse run` first, or pass --lake pointing at an existing lake.".into() });
    }
    Lake::open(uri, Default::default())
}
