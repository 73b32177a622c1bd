use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: at 10M rows glibc's malloc and
/// free (and their lock) were 17% of silver's CPU. Built without its
/// transparent-huge-page advice (`no_thp`): the kernel zeroed a whole 2 MiB
/// page on the first touch of each fresh region, 26% of an incremental
/// run's CPU. Without it a daily file's run at 10M rows took 2.7-3.3 s
/// instead of 3.7-4.7 s; a full 10M run was unchanged (29.4 s against
/// 29.2 s, medians of five alternated runs on 2 cores).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stack of every thread that plans or runs SQL. Planning, optimising and
/// dropping a deeply nested expression recurse once per level; the default
/// 2 MiB (8 MiB on the main thread) let one long `1+1+…` end the process.
/// The pages are reserved, not used, until a query needs them; the SQL size
/// and expression depth limits (`lakehouse::sql_limits`) keep every accepted
/// query well inside this.
const STACK: usize = 256 << 20;

fn main() -> ExitCode {
    let cli = lakehouse::cli::Cli::parse();
    init_logs(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(STACK)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // The command itself runs on a thread with the same stack as the
    // runtime's workers (the main thread's is fixed by the OS).
    let outcome = std::thread::Builder::new()
        .name("lakehouse-main".into())
        .stack_size(STACK)
        .spawn(move || runtime.block_on(lakehouse::cli::dispatch(cli)))
        .map_err(|e| lakehouse::Error::Internal(format!("cannot start the main thread: {e}")))
        .and_then(|t| {
            t.join().unwrap_or_else(|_| {
                Err(lakehouse::Error::Internal(
                    "the command panicked (see the message above)".into(),
                ))
            })
        });
    match outcome {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(lakehouse::cli::Exit::from_error(&e).code())
        }
    }
}

/// Logs go to stderr (stdout is for results and `--json`): as text, coloured
/// only on a terminal and when `NO_COLOR` is unset, or as one JSON object per
/// line for log shippers. `RUST_LOG` overrides the levels.
fn init_logs(format: lakehouse::cli::LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "warn,lakehouse=info,deltalake_core::operations::merge=error,deltalake_core::writer::stats=error,delta_kernel::snapshot=off,buoyant_kernel::snapshot=off",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        lakehouse::cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        lakehouse::cli::LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init()
        }
    }
}
