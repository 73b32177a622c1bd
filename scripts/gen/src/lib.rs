//! Deterministic generator of the retail example's landing files
//! (`landing/stores.csv`, `landing/products.csv`, `landing/orders/*.csv`),
//! with re-sent orders and every kind of dirty row the example names.
//! No dependencies, so it builds in seconds even in release mode; the test
//! suite includes this file directly.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

pub struct Options {
    pub rows: u64,
    pub files: u64,
    pub seed: u64,
    pub days: u32,
    /// Share of order rows made dirty (0.0..1.0).
    pub dirty: f64,
    /// Share of order rows that re-send an earlier order.
    pub resend: f64,
    /// Rows of the regional branch's exports (landing/branch_orders/), which
    /// use other column names, DD/MM/YYYY HH:MM dates and an extra column.
    pub branch_rows: u64,
    /// File n holds the orders placed in the n-th slice of the days, as daily
    /// exports do (re-sent orders still reach back); otherwise every file
    /// spreads over all the days.
    pub chronological: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rows: 1_000_000,
            files: 20,
            seed: 42,
            days: 365,
            dirty: 0.05,
            resend: 0.05,
            branch_rows: 0,
            chronological: false,
        }
    }
}

/// splitmix64: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

pub const REGIONS: [&str; 5] = ["north", "south", "east", "west", "central"];
pub const CATEGORIES: [&str; 8] = [
    "grocery",
    "electronics",
    "clothing",
    "home",
    "toys",
    "sports",
    "beauty",
    "garden",
];
pub const STORES: u64 = 40;
pub const PRODUCTS: u64 = 500;

/// Days since 1970-01-01 of the first order date (2025-01-01).
const START_DAY: i64 = 20089;

fn civil(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn timestamp(secs: i64, t_sep: bool) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let sep = if t_sep { 'T' } else { ' ' };
    format!(
        "{y:04}-{m:02}-{d:02}{sep}{:02}:{:02}:{:02}",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

struct Order {
    id: u64,
    ts: i64,
    updated: i64,
    customer: u64,
    store: u64,
    product: u64,
    quantity: i64,
    price_cents: i64,
    status: &'static str,
}

const HEADER: &str =
    "order_id,order_ts,updated_at,customer_id,store_id,product_id,quantity,unit_price,status";

fn line(o: &Order, rng: &mut Rng) -> String {
    let t_sep = rng.chance(0.5);
    let store = format!("S{:03}", o.store);
    let product = format!("P{:04}", o.product);
    // Some exports quote fields; quoting must not change the values.
    let customer = if rng.chance(0.02) {
        format!("\"C{:06}\"", o.customer)
    } else {
        format!("C{:06}", o.customer)
    };
    format!(
        "O{:09},{},{},{},{},{},{},{}.{:02},{}",
        o.id,
        timestamp(o.ts, t_sep),
        timestamp(o.updated, !t_sep),
        customer,
        store,
        product,
        o.quantity,
        o.price_cents / 100,
        o.price_cents % 100,
        o.status
    )
}

/// The dirty variants, one per kind the example names.
fn dirty(o: &Order, rng: &mut Rng) -> String {
    let clean = line(o, rng);
    let f: Vec<&str> = clean.split(',').collect();
    let mut f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
    match rng.below(10) {
        0 => f[0] = String::new(), // missing order_id
        1 => {
            f[3] = if rng.chance(0.5) {
                String::new()
            } else {
                "   ".into()
            }
        } // missing customer_id
        2 => {
            f[1] = [
                "2025-13-45 10:00:00",
                "not a date",
                "03/15/2025 10:00",
                "2025-02-30T08:00:00",
                "",
            ][rng.below(5) as usize]
                .into()
        } // bad order_ts
        3 => f[6] = ["0", "-2", "abc", "2.5", ""][rng.below(5) as usize].into(), // bad quantity
        4 => f[7] = ["\"12,50\"", "-3.00", "abc", "1e3", ""][rng.below(5) as usize].into(), // bad unit_price
        5 => f[4] = "S999".into(), // unknown store
        6 => {
            f.pop(); // ragged: a field short
        }
        7 => f.push("extra".into()),      // ragged: a field too many
        8 => f[8] = "compl\"eted".into(), // stray quote
        _ => f[5] = "P9999".into(),       // unknown product: valid row, category NULL
    }
    f.join(",")
}

/// Writes the landing files under `root/landing/`.
pub fn generate(root: &Path, opts: &Options) -> std::io::Result<()> {
    let landing = root.join("landing");
    let orders_dir = landing.join("orders");
    fs::create_dir_all(&orders_dir)?;
    let mut rng = Rng::new(opts.seed);

    let mut stores = BufWriter::new(File::create(landing.join("stores.csv"))?);
    writeln!(stores, "store_id,store_name,region,opened_on")?;
    for s in 1..=STORES {
        let region = REGIONS[(s % REGIONS.len() as u64) as usize];
        writeln!(
            stores,
            "S{s:03},\"Store {s}, {region}\",{region},2019-{:02}-01",
            1 + s % 12
        )?;
    }
    stores.flush()?;

    let mut products = BufWriter::new(File::create(landing.join("products.csv"))?);
    writeln!(products, "product_id,product_name,category,unit_cost")?;
    for p in 1..=PRODUCTS {
        let category = CATEGORIES[(p % CATEGORIES.len() as u64) as usize];
        writeln!(
            products,
            "P{p:04},Product {p},{category},{}.{:02}",
            1 + p % 90,
            p % 100
        )?;
    }
    products.flush()?;

    let files = opts.files.max(1);
    let per_file = opts.rows / files;
    let mut sent: Vec<Order> = Vec::new();
    let mut next_id = 1u64;
    let horizon = opts.days.max(1) as i64 * 86_400;
    for n in 0..files {
        let name = orders_dir.join(format!("orders_{:05}.csv", n + 1));
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&name)?);
        let crlf = n % 3 == 1;
        let eol = if crlf { "\r\n" } else { "\n" };
        if n % 4 == 2 {
            out.write_all(b"\xEF\xBB\xBF")?; // a BOM
        }
        write!(out, "{HEADER}{eol}")?;
        let rows = if n + 1 == files {
            opts.rows - per_file * (files - 1)
        } else {
            per_file
        };
        for _ in 0..rows {
            let resend = !sent.is_empty() && rng.chance(opts.resend);
            let order = if resend {
                // Re-send an earlier order with a later updated_at and a new status.
                let i = rng.below(sent.len() as u64) as usize;
                let prev = &sent[i];
                let o = Order {
                    id: prev.id,
                    ts: prev.ts,
                    updated: prev.updated + 1 + rng.below(7 * 86_400) as i64,
                    customer: prev.customer,
                    store: prev.store,
                    product: prev.product,
                    quantity: prev.quantity,
                    price_cents: prev.price_cents,
                    status: ["completed", "returned", "cancelled"][rng.below(3) as usize],
                };
                sent[i].updated = o.updated;
                o
            } else {
                let ts = if opts.chronological {
                    let slice = (horizon as u64 / files).max(1);
                    START_DAY * 86_400 + (n * slice + rng.below(slice)) as i64
                } else {
                    START_DAY * 86_400 + rng.below(horizon as u64) as i64
                };
                let o = Order {
                    id: next_id,
                    ts,
                    updated: ts + rng.below(3600) as i64,
                    customer: 1 + rng.below(50_000),
                    store: 1 + rng.below(STORES),
                    product: 1 + rng.below(PRODUCTS),
                    quantity: 1 + rng.below(5) as i64,
                    price_cents: 99 + rng.below(20_000) as i64,
                    status: if rng.chance(0.85) {
                        "completed"
                    } else if rng.chance(0.5) {
                        "returned"
                    } else {
                        "cancelled"
                    },
                };
                next_id += 1;
                o
            };
            let text = if rng.chance(opts.dirty) {
                dirty(&order, &mut rng)
            } else {
                line(&order, &mut rng)
            };
            // Keep a bounded pool of orders that may be re-sent later.
            if !resend {
                if sent.len() < 200_000 {
                    sent.push(order);
                } else {
                    let i = rng.below(sent.len() as u64) as usize;
                    sent[i] = order;
                }
            }
            write!(out, "{text}{eol}")?;
        }
        if n == files / 2 {
            write!(out, "{eol}   {eol}")?; // blank and whitespace-only lines
            write!(out, "{HEADER}{eol}")?; // a repeated header (concatenated export)
        }
        out.flush()?;
    }
    if opts.branch_rows > 0 {
        branch(root, opts, &mut rng)?;
    }
    // An empty file and a header-only file.
    File::create(orders_dir.join("orders_empty.csv"))?;
    fs::write(
        orders_dir.join("orders_header_only.csv"),
        format!("{HEADER}\n"),
    )?;
    Ok(())
}

pub const BRANCH_HEADER: &str =
    "OrderNo,Created,LastModified,ClientId,ShopId,ArticleNo,Qty,Price,State,SalesChannel";

fn branch_ts(secs: i64) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{d:02}/{m:02}/{y:04} {:02}:{:02}", s / 3600, (s / 60) % 60)
}

/// The branch's exports: own order numbers (B...), times to the minute.
fn branch(root: &Path, opts: &Options, rng: &mut Rng) -> std::io::Result<()> {
    let dir = root.join("landing").join("branch_orders");
    fs::create_dir_all(&dir)?;
    let files = (opts.branch_rows / 100_000).max(1);
    let per_file = opts.branch_rows / files;
    let horizon = opts.days.max(1) as u64 * 86_400;
    let mut next = 1u64;
    for n in 0..files {
        let mut out = BufWriter::new(File::create(dir.join(format!("branch_{:04}.csv", n + 1)))?);
        writeln!(out, "{BRANCH_HEADER}")?;
        let rows = if n + 1 == files {
            opts.branch_rows - per_file * (files - 1)
        } else {
            per_file
        };
        for _ in 0..rows {
            let ts = START_DAY * 86_400 + (rng.below(horizon) / 60 * 60) as i64;
            let resend = next > 1 && rng.chance(opts.resend);
            let id = if resend {
                1 + rng.below(next - 1)
            } else {
                next
            };
            if !resend {
                next += 1;
            }
            let updated = if resend {
                ts + 86_400 * 30 + rng.below(86_400) as i64 / 60 * 60
            } else {
                ts + 60 * rng.below(30) as i64
            };
            let mut f = vec![
                format!("B{id:08}"),
                branch_ts(ts),
                branch_ts(updated),
                format!("C{:06}", 1 + rng.below(50_000)),
                format!("S{:03}", 1 + rng.below(STORES)),
                format!("P{:04}", 1 + rng.below(PRODUCTS)),
                (1 + rng.below(5)).to_string(),
                format!("{}.{:02}", 1 + rng.below(200), rng.below(100)),
                [
                    "completed",
                    "completed",
                    "completed",
                    "returned",
                    "cancelled",
                ][rng.below(5) as usize]
                    .to_string(),
                ["store", "web", "phone"][rng.below(3) as usize].to_string(),
            ];
            if rng.chance(opts.dirty) {
                match rng.below(5) {
                    0 => f[0] = String::new(),
                    1 => f[1] = "31/02/2025 10:00".into(),
                    2 => f[6] = "0".into(),
                    3 => f[4] = "S999".into(),
                    _ => f[7] = "\"1,5\"".into(),
                }
            }
            writeln!(out, "{}", f.join(","))?;
        }
        out.flush()?;
    }
    Ok(())
}
