//! An RFC 4180 CSV record reader that never fails on bad data: each call
//! returns the next record with its line, byte offset and raw bytes, or the
//! raw bytes of a malformed record with the reason. Blank lines are skipped,
//! CRLF, LF and lone CR all end a line, a UTF-8 BOM is dropped, and quoted
//! fields may hold delimiters, doubled quotes and newlines.
//!
//! An unterminated quote would otherwise swallow the rest of the file; when a
//! quoted field reaches the end of the file or the field size limit, only the
//! record's first line is rejected and reading resumes on the next line.

use std::io::Read;

pub struct CsvOptions {
    pub delimiter: u8,
    pub quote: u8,
    pub max_field_bytes: usize,
}

/// One record: field bytes (quotes removed) and where it came from.
#[derive(Default, Debug)]
pub struct Record {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
    pub line: u64,
    pub offset: u64,
    pub raw: Vec<u8>,
    /// Set when the record is malformed; `data` is then meaningless.
    pub error: Option<String>,
}

impl Record {
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn field(&self, i: usize) -> &[u8] {
        &self.data[self.span(i)]
    }
    /// Where field `i` lies in `data`.
    pub fn span(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        start..self.ends[i]
    }
}

pub struct CsvReader<R> {
    input: R,
    opts: CsvOptions,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    /// Byte offset in the file of `buf[0]`.
    base: u64,
    /// Line number (1-based) at `pos`.
    line: u64,
    started: bool,
    pub blank_lines: u64,
}

enum Step {
    Done(usize),
    Malformed {
        end: usize,
        reason: String,
        first_line_only: bool,
    },
    NeedMore,
}

const CHUNK: usize = 1 << 20;

impl<R: Read> CsvReader<R> {
    pub fn new(input: R, opts: CsvOptions) -> Self {
        Self {
            input,
            opts,
            buf: Vec::with_capacity(CHUNK),
            pos: 0,
            eof: false,
            base: 0,
            line: 1,
            started: false,
            blank_lines: 0,
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + CHUNK, 0);
        let n = loop {
            match self.input.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Drops a UTF-8 BOM at the very start of the input.
    fn start(&mut self) -> std::io::Result<()> {
        if !self.started {
            while self.buf.len() < 3 && !self.eof {
                self.fill()?;
            }
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.pos = 3;
            }
            self.started = true;
        }
        Ok(())
    }

    /// Byte offset in the input of the next byte to read.
    pub fn position(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Moves, without reading records, to the first line start at or after
    /// byte `at` (the end of the input when there is none), counting the
    /// lines passed, so the records read from there carry their true line
    /// numbers. A line start follows an LF, or a CR not followed by an LF.
    /// Whether it is a record start (not inside a quoted value) only the
    /// reader that came from the input's start can tell: see
    /// `ingest::task` for how the pieces of a file are checked.
    pub fn skip_to_line_start(&mut self, at: u64) -> std::io::Result<()> {
        self.start()?;
        // In bulk up to the byte before `at`, keeping one byte to look at
        // after a CR.
        while self.position() + 1 < at {
            if self.buf.len() < self.pos + 2 {
                if self.eof {
                    self.pos = self.buf.len();
                    return Ok(());
                }
                self.fill()?;
                continue;
            }
            let take = ((at - 1 - self.position()) as usize).min(self.buf.len() - 1 - self.pos);
            let end = self.pos + take;
            let chunk = &self.buf[self.pos..end];
            let mut lines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            if chunk.contains(&b'\r') {
                lines += (self.pos..end)
                    .filter(|&k| self.buf[k] == b'\r' && self.buf[k + 1] != b'\n')
                    .count() as u64;
            }
            self.line += lines;
            self.pos = end;
        }
        if self.position() >= at {
            // Only when `at` lies in what was read before (a header).
            return Ok(());
        }
        // One byte at a time until a line ends.
        loop {
            if self.pos + 1 >= self.buf.len() && !self.eof {
                self.fill()?;
                continue;
            }
            let Some(&c) = self.buf.get(self.pos) else {
                return Ok(());
            };
            self.pos += 1;
            match c {
                b'\n' => {
                    self.line += 1;
                    return Ok(());
                }
                b'\r' if self.buf.get(self.pos) != Some(&b'\n') => {
                    self.line += 1;
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    /// Reads the next record into `rec`; `false` at the end of the input.
    pub fn next(&mut self, rec: &mut Record) -> std::io::Result<bool> {
        self.start()?;
        loop {
            // Skip blank and whitespace-only lines.
            loop {
                let mut i = self.pos;
                while i < self.buf.len() && (self.buf[i] == b' ' || self.buf[i] == b'\t') {
                    i += 1;
                }
                if i == self.buf.len() {
                    if self.eof {
                        if i > self.pos {
                            self.blank_lines += 1;
                        }
                        self.pos = i;
                        return Ok(false);
                    }
                    self.fill()?;
                    continue;
                }
                match self.buf[i] {
                    b'\n' => {
                        self.pos = i + 1;
                    }
                    b'\r' => {
                        if i + 1 == self.buf.len() && !self.eof {
                            self.fill()?;
                            continue;
                        }
                        self.pos = if self.buf.get(i + 1) == Some(&b'\n') {
                            i + 2
                        } else {
                            i + 1
                        };
                    }
                    _ => break,
                }
                self.line += 1;
                self.blank_lines += 1;
            }
            rec.data.clear();
            rec.ends.clear();
            rec.error = None;
            match self.parse(rec) {
                Step::NeedMore => {
                    self.fill()?;
                    continue;
                }
                Step::Done(end) => {
                    self.finish(rec, end);
                    return Ok(true);
                }
                Step::Malformed {
                    end,
                    reason,
                    first_line_only,
                } => {
                    let end = if first_line_only {
                        self.line_end(self.pos)
                    } else {
                        end
                    };
                    self.finish(rec, end);
                    rec.error = Some(reason);
                    return Ok(true);
                }
            }
        }
    }

    fn finish(&mut self, rec: &mut Record, end: usize) {
        let raw = &self.buf[self.pos..end];
        rec.line = self.line;
        rec.offset = self.base + self.pos as u64;
        rec.raw.clear();
        let trimmed = raw.strip_suffix(b"\n").unwrap_or(raw);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        rec.raw.extend_from_slice(trimmed);
        // Line ends: every LF, and every CR not followed by an LF (the
        // count of LFs is one vectorised pass; CRs are rare).
        let mut lines = raw.iter().filter(|&&b| b == b'\n').count() as u64;
        if raw.contains(&b'\r') {
            lines += raw
                .iter()
                .enumerate()
                .filter(|&(k, &b)| b == b'\r' && raw.get(k + 1) != Some(&b'\n'))
                .count() as u64;
        }
        self.line += lines;
        self.pos = end;
    }

    /// End (exclusive, terminator included) of the physical line at `from`.
    fn line_end(&self, from: usize) -> usize {
        let b = &self.buf;
        let mut i = from;
        while i < b.len() {
            match b[i] {
                b'\n' => return i + 1,
                b'\r' => {
                    return if b.get(i + 1) == Some(&b'\n') {
                        i + 2
                    } else {
                        i + 1
                    }
                }
                _ => i += 1,
            }
        }
        i
    }

    fn parse(&self, rec: &mut Record) -> Step {
        let b = &self.buf;
        let (d, q, max) = (
            self.opts.delimiter,
            self.opts.quote,
            self.opts.max_field_bytes,
        );
        let mut i = self.pos;
        loop {
            // At the start of a field.
            if i < b.len() && b[i] == q {
                i += 1;
                let start_len = rec.data.len();
                loop {
                    if i >= b.len() {
                        if self.eof {
                            return Step::Malformed {
                                end: i,
                                reason: "unterminated quoted field".into(),
                                first_line_only: true,
                            };
                        }
                        return Step::NeedMore;
                    }
                    let c = b[i];
                    if c == q {
                        if i + 1 < b.len() && b[i + 1] == q {
                            rec.data.push(q);
                            i += 2;
                            // Escaped quotes count toward the limit too
                            // (found by the property test).
                            if rec.data.len() - start_len > max {
                                return Step::Malformed {
                                    end: i,
                                    reason: format!("unterminated quoted field or field longer than {max} bytes"),
                                    first_line_only: true,
                                };
                            }
                            continue;
                        }
                        if i + 1 == b.len() && !self.eof {
                            return Step::NeedMore;
                        }
                        i += 1;
                        break;
                    }
                    rec.data.push(c);
                    i += 1;
                    if rec.data.len() - start_len > max {
                        return Step::Malformed {
                            end: i,
                            reason: format!(
                                "unterminated quoted field or field longer than {max} bytes"
                            ),
                            first_line_only: true,
                        };
                    }
                }
                rec.ends.push(rec.data.len());
                if i >= b.len() {
                    if self.eof {
                        return Step::Done(i);
                    }
                    return Step::NeedMore;
                }
                match b[i] {
                    c if c == d => {
                        i += 1;
                        if i >= b.len() && !self.eof {
                            return Step::NeedMore;
                        }
                        continue;
                    }
                    b'\n' => return Step::Done(i + 1),
                    b'\r' => {
                        if i + 1 == b.len() && !self.eof {
                            return Step::NeedMore;
                        }
                        return Step::Done(if b.get(i + 1) == Some(&b'\n') {
                            i + 2
                        } else {
                            i + 1
                        });
                    }
                    _ => {
                        let end = self.line_end(i);
                        if end == b.len() && !self.eof {
                            return Step::NeedMore;
                        }
                        return Step::Malformed {
                            end,
                            reason: format!(
                                "unexpected text after a closing quote in field {}",
                                rec.ends.len()
                            ),
                            first_line_only: false,
                        };
                    }
                }
            }
            // Unquoted field.
            let start = i;
            while i < b.len() {
                let c = b[i];
                if c == d || c == b'\n' || c == b'\r' || c == q {
                    break;
                }
                i += 1;
            }
            if i >= b.len() && !self.eof {
                return Step::NeedMore;
            }
            if i - start > max {
                let end = self.line_end(i.min(b.len()));
                if end == b.len() && !self.eof {
                    return Step::NeedMore;
                }
                return Step::Malformed {
                    end,
                    reason: format!("field {} is longer than {max} bytes", rec.ends.len() + 1),
                    first_line_only: false,
                };
            }
            rec.data.extend_from_slice(&b[start..i]);
            rec.ends.push(rec.data.len());
            if i >= b.len() {
                return Step::Done(i);
            }
            match b[i] {
                c if c == d => {
                    i += 1;
                    if i >= b.len() {
                        if self.eof {
                            rec.ends.push(rec.data.len());
                            return Step::Done(i);
                        }
                        return Step::NeedMore;
                    }
                }
                b'\n' => return Step::Done(i + 1),
                b'\r' => {
                    if i + 1 == b.len() && !self.eof {
                        return Step::NeedMore;
                    }
                    return Step::Done(if b.get(i + 1) == Some(&b'\n') {
                        i + 2
                    } else {
                        i + 1
                    });
                }
                _ => {
                    // A quote inside an unquoted field.
                    let end = self.line_end(i);
                    if end == b.len() && !self.eof {
                        return Step::NeedMore;
                    }
                    return Step::Malformed {
                        end,
                        reason: format!("stray quote in unquoted field {}", rec.ends.len()),
                        first_line_only: false,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Vec<(u64, Result<Vec<String>, String>)> {
        let mut r = CsvReader::new(
            input,
            CsvOptions {
                delimiter: b',',
                quote: b'"',
                max_field_bytes: 64,
            },
        );
        let mut rec = Record::default();
        let mut out = Vec::new();
        while r.next(&mut rec).unwrap() {
            let v = match &rec.error {
                Some(e) => Err(e.clone()),
                None => Ok((0..rec.len())
                    .map(|i| String::from_utf8_lossy(rec.field(i)).into_owned())
                    .collect()),
            };
            out.push((rec.line, v));
        }
        out
    }

    fn ok(fields: &[&str]) -> Result<Vec<String>, String> {
        Ok(fields.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn plain_crlf_bom_blank_lines_and_no_trailing_newline() {
        let got = read_all(b"\xEF\xBB\xBFa,b\r\n1,2\r\n\r\n   \n3,\r4,5");
        assert_eq!(
            got,
            vec![
                (1, ok(&["a", "b"])),
                (2, ok(&["1", "2"])),
                (5, ok(&["3", ""])),
                (6, ok(&["4", "5"]))
            ]
        );
    }

    #[test]
    fn quoted_fields_keep_delimiters_quotes_and_newlines() {
        let got = read_all(b"id,note\n1,\"a, \"\"b\"\"\nc\"\n2,x\n");
        assert_eq!(
            got,
            vec![
                (1, ok(&["id", "note"])),
                (2, ok(&["1", "a, \"b\"\nc"])),
                (4, ok(&["2", "x"]))
            ]
        );
    }

    #[test]
    fn stray_and_unterminated_quotes_reject_only_their_line() {
        let got = read_all(b"a,b\n1,x\"y\n2,\"ok\"z\n3,\"never closed\n4,fine\n");
        assert_eq!(got[0], (1, ok(&["a", "b"])));
        assert!(
            matches!(&got[1], (2, Err(e)) if e.contains("stray quote")),
            "{got:?}"
        );
        assert!(
            matches!(&got[2], (3, Err(e)) if e.contains("after a closing quote")),
            "{got:?}"
        );
        assert!(
            matches!(&got[3], (4, Err(e)) if e.contains("unterminated")),
            "{got:?}"
        );
        assert_eq!(got[4], (5, ok(&["4", "fine"])));
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn trailing_delimiter_makes_an_empty_last_field() {
        assert_eq!(read_all(b"a,b,\n"), vec![(1, ok(&["a", "b", ""]))]);
        assert_eq!(read_all(b"a,b,"), vec![(1, ok(&["a", "b", ""]))]);
    }

    #[test]
    fn escaped_quotes_count_toward_the_field_limit() {
        let mut r = CsvReader::new(
            &b"a,\"aaaa\n\na\"\"\",\nb,c\n"[..],
            CsvOptions {
                delimiter: b',',
                quote: b'"',
                max_field_bytes: 7,
            },
        );
        let mut rec = Record::default();
        let mut out = Vec::new();
        while r.next(&mut rec).unwrap() {
            if rec.error.is_none() {
                assert!(
                    (0..rec.len()).all(|i| rec.field(i).len() <= 7),
                    "a field over the limit was accepted"
                );
            }
            out.push((rec.line, rec.error.is_some()));
        }
        assert_eq!(
            out[0],
            (1, true),
            "the over-long quoted field rejects its line"
        );
        assert_eq!(
            out.last(),
            Some(&(4, false)),
            "reading resumes after it: {out:?}"
        );
    }

    #[test]
    fn records_split_across_read_chunks_are_whole() {
        let mut big = b"id,v\n".to_vec();
        for i in 0..200_000 {
            big.extend_from_slice(format!("{i},\"q\"\"{i}\"\r\n").as_bytes());
        }
        let got = read_all(&big);
        assert_eq!(got.len(), 200_001);
        assert_eq!(got[123_457], (123_458, ok(&["123456", "q\"123456"])));
    }
}

/// Properties of the reader over generated input. The suite runs a bounded
/// number of cases; `scripts/fuzz-csv` runs many more.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn quote(field: &str) -> String {
        if field.contains([',', '"', '\n', '\r']) || field.trim() != field || field.is_empty() {
            format!("\"{}\"", field.replace('"', "\"\""))
        } else {
            field.to_string()
        }
    }

    fn read(input: &[u8], max: usize) -> Vec<Record> {
        let mut r = CsvReader::new(
            input,
            CsvOptions {
                delimiter: b',',
                quote: b'"',
                max_field_bytes: max,
            },
        );
        let mut out = Vec::new();
        loop {
            let mut rec = Record::default();
            if !r.next(&mut rec).unwrap() {
                break;
            }
            out.push(rec);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
            ..ProptestConfig::default()
        })]

        /// Valid CSV, whatever its values, comes back exactly, at the right lines.
        #[test]
        fn valid_csv_round_trips(
            rows in prop::collection::vec(prop::collection::vec("[a-z,\" \\n\\r\u{e9}]{0,8}", 1..5), 1..20),
            crlf in any::<bool>(),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            let mut lines = Vec::new();
            let mut line = 1u64;
            for row in &rows {
                let encoded: Vec<String> = row.iter().map(|f| quote(f)).collect();
                let rec = encoded.join(",");
                lines.push(line);
                line += 1 + rec.matches('\n').count() as u64 + rec.matches('\r').filter(|_| true).count() as u64
                    - rec.matches("\r\n").count() as u64;
                text.push_str(&rec);
                text.push_str(eol);
            }
            let got = read(text.as_bytes(), 1 << 20);
            prop_assert_eq!(got.len(), rows.len());
            for ((rec, row), want_line) in got.iter().zip(&rows).zip(&lines) {
                prop_assert!(rec.error.is_none(), "{:?}", rec.error);
                let fields: Vec<String> = (0..rec.len()).map(|i| String::from_utf8(rec.field(i).to_vec()).unwrap()).collect();
                prop_assert_eq!(&fields, row);
                prop_assert_eq!(rec.line, *want_line);
            }
        }

        /// Any bytes at all: no panic, and every record is an exact slice of
        /// the input at its offset, in order, at a line that exists.
        #[test]
        fn arbitrary_bytes_never_panic_and_every_record_is_traceable(
            input in prop::collection::vec(prop_oneof![
                4 => prop::sample::select(b"ab,\"\n\r \t".to_vec()),
                1 => any::<u8>(),
            ], 0..400),
            max in 1usize..64,
        ) {
            let got = read(&input, max);
            let lines = 1 + input.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64;
            let mut last_end = 0u64;
            for rec in &got {
                let start = rec.offset as usize;
                prop_assert!(rec.offset >= last_end, "records overlap");
                prop_assert_eq!(&input[start..start + rec.raw.len()], &rec.raw[..]);
                prop_assert!(rec.line >= 1 && rec.line <= lines);
                last_end = rec.offset + rec.raw.len() as u64;
                if rec.error.is_none() {
                    for i in 0..rec.len() {
                        prop_assert!(rec.field(i).len() <= max);
                    }
                }
            }
        }
    }
}
