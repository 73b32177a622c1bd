//! An independent implementation of retail-pipeline.md, computed straight
//! from the landing CSV with the `csv` crate (not the reader under test), so
//! the figures the job produces are checked against a second reading.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use chrono::NaiveDateTime;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct DailyRegion {
    pub orders: i64,
    pub units: i64,
    pub revenue_cents: i128,
    pub returns: i64,
    pub completed: i64,
}

#[derive(Debug, Default)]
pub struct Expected {
    pub landed_rows: u64,
    pub bronze_rows: u64,
    pub bronze_rejects: u64,
    pub branch_bronze_rows: u64,
    pub branch_rejects: u64,
    pub quarantine: BTreeMap<String, u64>,
    pub duplicates: u64,
    pub silver_rows: u64,
    pub silver_amount_cents: i128,
    pub daily: BTreeMap<(String, String), DailyRegion>,
    /// (date, region, category or "") -> (revenue cents, units)
    pub category: BTreeMap<(String, String, String), (i128, i64)>,
}

fn parse_ts(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
        .ok()
}

/// The branch exports' format: DD/MM/YYYY HH:MM.
fn parse_branch_ts(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s.trim(), "%d/%m/%Y %H:%M").ok()
}

fn parse_qty(s: &str) -> Option<i64> {
    let s = s.trim();
    let digits = s.trim_start_matches(['+', '-']);
    if digits.is_empty()
        || digits.len() > 9
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || s.len() - digits.len() > 1
    {
        return None;
    }
    s.parse().ok()
}

fn parse_price_cents(s: &str) -> Option<i128> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || int.len() > 10 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if body.contains('.') && (frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let mut cents: i128 = int.parse::<i128>().ok()? * 100;
    let f = format!("{frac:0<2}");
    cents += f[..2].parse::<i128>().ok()?;
    Some(if neg { -cents } else { cents })
}

fn read_csv(path: &Path) -> Vec<(u64, Vec<String>)> {
    let mut bytes = std::fs::read(path).unwrap();
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let mut out = Vec::new();
    for rec in reader.byte_records() {
        let rec = rec.unwrap();
        let line = rec.position().unwrap().line();
        let fields: Vec<String> = rec
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        if fields.len() == 1 && fields[0].trim().is_empty() {
            continue; // blank or whitespace-only line
        }
        out.push((line, fields));
    }
    out
}

pub fn compute(lake: &Path) -> Expected {
    let landing = lake.join("landing");
    let mut stores: HashMap<String, String> = HashMap::new();
    for (_, f) in read_csv(&landing.join("stores.csv")).into_iter().skip(1) {
        stores.insert(f[0].trim().to_string(), f[2].trim().to_string());
    }
    let mut categories: HashMap<String, String> = HashMap::new();
    for (_, f) in read_csv(&landing.join("products.csv")).into_iter().skip(1) {
        categories.insert(f[0].trim().to_string(), f[2].trim().to_string());
    }

    let mut e = Expected::default();
    // order_id -> (updated_at, file, line, row)
    struct Row {
        updated: Option<NaiveDateTime>,
        file: String,
        line: u64,
        date: String,
        region: String,
        category: String,
        quantity: i64,
        amount: i128,
        status: String,
    }
    let mut latest: HashMap<String, Row> = HashMap::new();
    let mut valid = 0u64;
    // (folder, field count, timestamp parser, positions of the nine standard columns)
    let sources: [(&str, usize, fn(&str) -> Option<NaiveDateTime>); 2] = [
        ("orders", 9, parse_ts),
        ("branch_orders", 10, parse_branch_ts),
    ];
    for (folder, width, ts_of) in sources {
        let dir = landing.join(folder);
        if !dir.is_dir() {
            continue;
        }
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|d| d.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let name = format!(
                "landing/{folder}/{}",
                path.file_name().unwrap().to_string_lossy()
            );
            let rows = read_csv(&path);
            let Some((_, header)) = rows.first() else {
                continue;
            };
            let header = header.clone();
            for (line, f) in rows.into_iter().skip(1) {
                e.landed_rows += 1;
                if f.len() != width || f.iter().any(|v| v.contains('"')) || f == header {
                    if width == 9 {
                        e.bronze_rejects += 1
                    } else {
                        e.branch_rejects += 1
                    }
                    continue;
                }
                if width == 9 {
                    e.bronze_rows += 1
                } else {
                    e.branch_bronze_rows += 1
                }
                // Both layouts put the nine standard columns first, in the same order.
                let order_id = f[0].trim();
                let reason = if order_id.is_empty() {
                    Some("missing_order_id")
                } else if f[3].trim().is_empty() {
                    Some("missing_customer_id")
                } else if ts_of(&f[1]).is_none() {
                    Some("bad_order_ts")
                } else if parse_qty(&f[6]).is_none_or(|q| q <= 0) {
                    Some("bad_quantity")
                } else if parse_price_cents(&f[7]).is_none_or(|p| p < 0) {
                    Some("bad_unit_price")
                } else if !stores.contains_key(f[4].trim()) {
                    Some("unknown_store_id")
                } else {
                    None
                };
                if let Some(r) = reason {
                    *e.quarantine.entry(r.to_string()).or_default() += 1;
                    continue;
                }
                valid += 1;
                let ts = ts_of(&f[1]).unwrap();
                let quantity = parse_qty(&f[6]).unwrap();
                let row = Row {
                    updated: ts_of(&f[2]),
                    file: name.clone(),
                    line,
                    date: ts.date().format("%Y-%m-%d").to_string(),
                    region: stores[f[4].trim()].clone(),
                    category: categories.get(f[5].trim()).cloned().unwrap_or_default(),
                    quantity,
                    amount: quantity as i128 * parse_price_cents(&f[7]).unwrap(),
                    status: f[8].trim().to_string(),
                };
                let newer = match latest.get(order_id) {
                    None => true,
                    Some(old) => {
                        (row.updated, &row.file, row.line) > (old.updated, &old.file, old.line)
                    }
                };
                if newer {
                    latest.insert(order_id.to_string(), row);
                }
            }
        }
    }
    e.silver_rows = latest.len() as u64;
    e.duplicates = valid - e.silver_rows;
    let mut seen = HashSet::new();
    for row in latest.values() {
        e.silver_amount_cents += row.amount;
        let d = e
            .daily
            .entry((row.date.clone(), row.region.clone()))
            .or_default();
        d.orders += 1;
        match row.status.as_str() {
            "completed" => {
                d.units += row.quantity;
                d.revenue_cents += row.amount;
                d.completed += 1;
                let c = e
                    .category
                    .entry((row.date.clone(), row.region.clone(), row.category.clone()))
                    .or_default();
                c.0 += row.amount;
                c.1 += row.quantity;
            }
            "returned" => d.returns += 1,
            _ => {}
        }
        seen.insert(row.date.clone());
    }
    e
}
