use std::path::PathBuf;

fn main() {
    let mut opts = retail_gen::Options::default();
    let mut out = PathBuf::from("lake");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let num = |v: &str| -> f64 {
            v.replace('_', "").parse().unwrap_or_else(|_| {
                eprintln!("error: `{v}` is not a number for {}", args[i]);
                std::process::exit(2)
            })
        };
        match args[i].as_str() {
            "--rows" => opts.rows = num(&value) as u64,
            "--files" => opts.files = num(&value) as u64,
            "--seed" => opts.seed = num(&value) as u64,
            "--days" => opts.days = num(&value) as u32,
            "--dirty" => opts.dirty = num(&value),
            "--resend" => opts.resend = num(&value),
            "--branch-rows" => opts.branch_rows = num(&value) as u64,
            "--out" => out = PathBuf::from(&value),
            "--chronological" => {
                opts.chronological = true;
                i += 1;
                continue;
            }
            "-h" | "--help" => {
                println!("usage: retail-gen [--out LAKE] [--rows N] [--files N] [--seed N] [--days N] [--dirty 0.05] [--resend 0.05] [--branch-rows 0] [--chronological]\nwrites LAKE/landing/{{stores,products}}.csv, LAKE/landing/orders/*.csv and, with --branch-rows, LAKE/landing/branch_orders/*.csv");
                return;
            }
            other => {
                eprintln!("error: unknown argument `{other}` (see --help)");
                std::process::exit(2)
            }
        }
        i += 2;
    }
    let started = std::time::Instant::now();
    if let Err(e) = retail_gen::generate(&out, &opts) {
        eprintln!("error: writing {}: {e}", out.display());
        std::process::exit(1)
    }
    eprintln!("wrote {} order rows in {} files under {} in {:.1}s", opts.rows, opts.files, out.join("landing").display(), started.elapsed().as_secs_f64());
}
