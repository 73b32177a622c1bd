//! Looks at a landed file before its rows are taken: refuses, by name and
//! with a hint, files that are binary, compressed files that do not
//! decompress, and headers that cannot be mapped (a wrong delimiter, empty or
//! repeated column names). Returns the header's column names, renamed and
//! normalised, so the source's schema can be settled before any row is read.

use std::io::{Cursor, Read};

use super::csv::{CsvReader, Record};
use super::reader;
use crate::pipeline::CsvSource;
use crate::storage::LandedFile;

const SAMPLE: usize = 64 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Sniffed {
    /// Normalised column names of the header; `None` for an empty file or a
    /// source without a header.
    pub header: Option<Vec<String>>,
    /// Why the whole file is refused.
    pub refused: Option<String>,
}

/// Lower-cased, trimmed header names with the source's `rename` applied.
pub fn normalise_header(rec: &Record, rename: &[(String, String)]) -> Vec<String> {
    (0..rec.len())
        .map(|i| {
            let raw = String::from_utf8_lossy(rec.field(i)).trim().to_string();
            match rename
                .iter()
                .find(|(from, _)| from.eq_ignore_ascii_case(&raw))
            {
                Some((_, to)) => to.to_lowercase(),
                None => raw.to_lowercase(),
            }
        })
        .collect()
}

pub(crate) fn is_compressed(name: &str) -> bool {
    let n = name.to_lowercase();
    n.ends_with(".gz") || n.ends_with(".zst") || n.ends_with(".zstd") || n.ends_with(".bz2")
}

pub fn sniff(
    file: &LandedFile,
    csv: &CsvSource,
    handle: tokio::runtime::Handle,
) -> std::io::Result<Sniffed> {
    let refuse = |why: String| {
        Ok(Sniffed {
            header: None,
            refused: Some(why),
        })
    };
    let mut input = match reader::open(file, handle) {
        Ok(r) => r,
        Err(e) => return refuse(format!("cannot be opened: {e}")),
    };
    let mut sample = Vec::with_capacity(SAMPLE);
    if let Err(e) = input.by_ref().take(SAMPLE as u64).read_to_end(&mut sample) {
        return refuse(format!(
            "cannot be read{}: {e}",
            if is_compressed(&file.name) {
                " (is it a complete archive?)"
            } else {
                ""
            }
        ));
    }
    let head = &sample[..sample.len().min(8192)];
    let control = head
        .iter()
        .filter(|&&b| b < 0x09 || (0x0E..0x20).contains(&b))
        .count();
    if !head.is_empty() && control * 20 > head.len() {
        return refuse(format!(
            "looks like a binary file, not CSV ({control} control bytes in its first {} bytes)",
            head.len()
        ));
    }
    if is_compressed(&file.name) {
        // A truncated or corrupt archive fails only at its end: check it
        // whole now, so that none of its rows is taken if it is bad.
        if let Err(e) = std::io::copy(&mut input, &mut std::io::sink()) {
            return refuse(format!(
                "cannot be decompressed: {e}. Check that the archive is complete"
            ));
        }
    }
    if !csv.header {
        return Ok(Sniffed::default());
    }
    let mut reader = CsvReader::new(
        Cursor::new(&sample),
        super::csv::CsvOptions {
            delimiter: csv.delimiter,
            quote: csv.quote,
            max_field_bytes: csv.max_field_bytes,
        },
    );
    let mut rec = Record::default();
    if !reader.next(&mut rec)? {
        return Ok(Sniffed::default());
    }
    if let Some(err) = &rec.error {
        return refuse(format!("its header line is malformed ({err})"));
    }
    let names = normalise_header(&rec, &csv.rename);
    if names.len() == 1 {
        let only = &names[0];
        for (d, label) in [(',', ","), (';', ";"), ('\t', "\\t"), ('|', "|")] {
            if d as u8 != csv.delimiter && only.contains(d) {
                return refuse(format!(
                    "its header is a single column `{only}`: the file looks `{label}`-delimited. Set delimiter = \"{label}\" in the source settings, or fix the file"
                ));
            }
        }
    }
    if let Some(i) = names.iter().position(|n| n.is_empty()) {
        return refuse(format!(
            "its header has an empty column name at position {}",
            i + 1
        ));
    }
    if let Some(n) = names.iter().find(|n| n.starts_with('_')) {
        return refuse(format!("its header has a column `{n}`; names starting with `_` are reserved for lineage columns (use `rename`)"));
    }
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return refuse(format!("its header names column `{n}` twice"));
        }
    }
    Ok(Sniffed {
        header: Some(names),
        refused: None,
    })
}
