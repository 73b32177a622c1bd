//! Wording shared by messages and summaries.

/// `n` and the noun, plural unless `n` is 1: "1 row", "2 rows". Nouns
/// ending in "s" are not in use.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// How a column of [`table`] lines up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Rows as aligned text: columns two spaces apart, each as wide as its
/// widest cell (in characters), lines without trailing spaces; `rule` puts
/// dashes under the first row. `align` names each column's side (missing:
/// left).
pub fn table(rows: &[Vec<String>], align: &[Align], rule: bool) -> String {
    let columns = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(widths[i].saturating_sub(c.chars().count()));
                match align.get(i).copied().unwrap_or(Align::Left) {
                    Align::Left => format!("{c}{pad}"),
                    Align::Right => format!("{pad}{c}"),
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if n == 0 && rule {
            let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&dashes.join("  "));
            out.push('\n');
        }
    }
    out
}

/// `12.3 MiB`: sizes as people read them, in binary units.
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_by_characters() {
        let rows = vec![
            vec!["table".to_string(), "rows".to_string(), "note".to_string()],
            vec!["silver.é".to_string(), "12345".to_string(), String::new()],
            vec!["gold.x".to_string(), "7".to_string(), "…".to_string()],
        ];
        assert_eq!(
            table(&rows, &[Align::Left, Align::Right], true),
            "table      rows  note\n--------  -----  ----\nsilver.é  12345\ngold.x        7  …\n"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(3000), "2.9 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
