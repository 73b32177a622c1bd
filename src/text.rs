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
