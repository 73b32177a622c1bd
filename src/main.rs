use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(
            "warn,lakehouse=info,deltalake_core::operations::merge=error,deltalake_core::writer::stats=error,delta_kernel::snapshot=off,buoyant_kernel::snapshot=off",
        )
        }))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = lakehouse::cli::Cli::parse();
    match lakehouse::cli::dispatch(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
