//! The malformed-file corpus (tests/corpus/): every file is its own source;
//! each is read correctly, rejected row by row with the reason and line, or
//! refused as a whole by name, and one bad file never stops the others.

use std::path::Path;

use crate::{lakehouse, one, repo, strings, text};

/// (source, file glob under landing/, extra settings)
const CASES: &[(&str, &str, &str)] = &[
    ("c01", "01_bom.csv", ""),
    ("c02", "02_crlf.csv", ""),
    ("c03", "03_mixed_line_ends.csv", ""),
    ("c04", "04_blank_lines.csv", ""),
    ("c05", "05_no_trailing_newline.csv", ""),
    ("c06", "06_quoted_fields.csv", ""),
    ("c07", "07_ragged_short.csv", ""),
    ("c08", "08_ragged_long.csv", ""),
    ("c09", "09_unterminated_quote.csv", ""),
    ("c10", "10_repeated_header.csv", ""),
    ("c11", "11_nul_byte.csv", ""),
    ("c12", "12_invalid_utf8.csv", ""),
    ("c13", "13_field_too_long.csv", "max_field_bytes = 16\n"),
    ("c14", "14_empty.csv", ""),
    ("c15", "15_header_only.csv", ""),
    ("c16", "16_reordered_columns.csv", ""),
    ("c17", "17_gzip.csv.gz", ""),
    ("c18", "18_zstd.csv.zst", ""),
    ("c19", "19_bzip2.csv.bz2", ""),
    ("c20", "20_*.csv", ""),
    ("c21", "21_missing_column.csv", ""),
    ("c22", "22_*.csv", "on_schema_change = \"fail\"\n"),
    ("c23", "23_binary.csv", ""),
    ("c24", "24_semicolon.csv", ""),
    ("c25", "25_truncated.csv.gz", ""),
    ("c26", "26_stray_quote.csv", ""),
    ("c27", "27_text_after_quote.csv", ""),
    ("c28", "28_combination.csv", ""),
    ("c29", "29_tab_delimited.tsv", "delimiter = \"\\t\"\n"),
    (
        "c30",
        "30_renamed_headers.csv",
        "[rename]\nID = \"id\"\n\"Customer Name\" = \"name\"\nAMT = \"amount\"\n",
    ),
];

fn build(root: &Path) -> std::process::Output {
    let landing = root.join("lake/landing");
    std::fs::create_dir_all(&landing).unwrap();
    std::fs::create_dir_all(root.join("sql/bronze")).unwrap();
    for entry in std::fs::read_dir(repo().join("tests/corpus")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, landing.join(p.file_name().unwrap())).unwrap();
    }
    for (name, glob, extra) in CASES {
        std::fs::write(
            root.join(format!("sql/bronze/{name}.toml")),
            format!(
                "files = \"landing/{glob}\"\ncolumns = [\"id\", \"name\", \"amount\"]\n{extra}"
            ),
        )
        .unwrap();
    }
    lakehouse(&["run", "--lake", "lake", "--pipeline", "sql"], root)
}

async fn rows(lake: &Path, source: &str) -> Vec<Vec<String>> {
    strings(lake, &format!("SELECT id, name, amount, CAST(_source_line AS VARCHAR) AS line FROM bronze.{source} ORDER BY _source_file, _source_line")).await
}

async fn rejects(lake: &Path, source: &str) -> Vec<Vec<String>> {
    strings(lake, &format!("SELECT CAST(_source_line AS VARCHAR) AS line, _reason FROM quarantine.bronze_{source} ORDER BY _source_line")).await
}

fn r(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_file_is_read_rejected_or_refused_as_expected() {
    assert!(CASES.len() >= 25);
    let dir = tempfile::tempdir().unwrap();
    let out = build(dir.path());
    let summary = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "refused files make the run fail, after the good ones: {summary}"
    );
    let lake = dir.path().join("lake");

    let two = vec![r(&["1", "a", "10", "2"]), r(&["2", "b", "20", "3"])];
    for source in ["c01", "c05", "c17", "c18", "c19", "c30"] {
        assert_eq!(rows(&lake, source).await, two, "{source}");
        assert!(rejects(&lake, source).await.is_empty(), "{source}");
    }
    let three = vec![
        r(&["1", "a", "10", "2"]),
        r(&["2", "b", "20", "3"]),
        r(&["3", "c", "30", "4"]),
    ];
    assert_eq!(rows(&lake, "c02").await, three);
    assert_eq!(
        rows(&lake, "c03").await,
        three,
        "LF, CRLF and a lone CR all end a line"
    );
    assert_eq!(
        rows(&lake, "c04").await,
        vec![r(&["1", "a", "10", "3"]), r(&["2", "b", "20", "6"])],
        "blank lines are skipped and counted as lines"
    );
    assert_eq!(
        rows(&lake, "c06").await,
        vec![
            r(&["1", "a, with comma", "10", "2"]),
            r(&["2", "say \"hi\"", "20", "3"]),
            r(&["3", "two\nlines", "30", "4"])
        ]
    );

    let one_bad = |line: &str, reason: &str| vec![r(&[line, reason])];
    let kept_1_3 = vec![r(&["1", "a", "10", "2"]), r(&["3", "c", "30", "4"])];
    for (source, reason) in [
        ("c07", "expected 3 fields, found 2"),
        ("c08", "expected 3 fields, found 4"),
        ("c11", "NUL byte in field 2"),
        ("c12", "invalid UTF-8 in field 2"),
        ("c13", "field 2 is longer than 16 bytes"),
        ("c26", "stray quote in unquoted field 2"),
        ("c27", "unexpected text after a closing quote in field 2"),
    ] {
        assert_eq!(rows(&lake, source).await, kept_1_3, "{source}");
        assert_eq!(
            rejects(&lake, source).await,
            one_bad("3", reason),
            "{source}"
        );
    }
    // The raw bytes of a rejected line are kept exactly, even when not UTF-8.
    let raw = strings(&lake, "SELECT encode(_raw, 'hex') AS raw, CAST(_byte_offset AS VARCHAR) AS o FROM quarantine.bronze_c12").await;
    assert_eq!(raw, vec![r(&["322c636166e92c3230", "22"])]);

    assert_eq!(
        rows(&lake, "c09").await,
        vec![
            r(&["1", "a", "10", "2"]),
            r(&["3", "c", "30", "4"]),
            r(&["4", "d", "40", "5"])
        ]
    );
    assert_eq!(
        rejects(&lake, "c09").await,
        one_bad("3", "unterminated quoted field")
    );
    assert_eq!(
        rows(&lake, "c10").await,
        vec![r(&["1", "a", "10", "2"]), r(&["2", "b", "20", "4"])]
    );
    assert_eq!(
        rejects(&lake, "c10").await,
        one_bad("3", "repeated header line")
    );

    for source in ["c14", "c15"] {
        assert_eq!(
            one(&lake, &format!("SELECT count(*) FROM bronze.{source}")).await,
            0,
            "{source}"
        );
    }
    assert_eq!(
        rows(&lake, "c16").await,
        two,
        "columns are matched by header name"
    );

    // Schema drift: a new column is added, earlier rows read NULL.
    let drift = strings(&lake, "SELECT id, channel FROM bronze.c20 ORDER BY id").await;
    assert_eq!(drift, vec![r(&["1", "NULL"]), r(&["2", "web"])]);
    assert_eq!(
        rows(&lake, "c21").await,
        vec![r(&["1", "a", "NULL", "2"]), r(&["2", "b", "NULL", "3"])]
    );
    assert!(
        summary.contains("21_missing_column.csv lacks column(s) amount (NULL for its 2 rows)"),
        "{summary}"
    );
    // ... or, with on_schema_change = "fail", the file is refused and the others go in.
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.c22").await, 1);
    assert!(
        summary
            .contains("22_b_strict_new_column.csv refused: its header has column(s) [\"channel\"]"),
        "{summary}"
    );

    assert!(
        summary.contains("23_binary.csv refused: looks like a binary file, not CSV"),
        "{summary}"
    );
    assert!(summary.contains("24_semicolon.csv refused: its header is a single column `id;name;amount`: the file looks `;`-delimited. Set delimiter = \";\""), "{summary}");
    assert!(
        summary.contains("25_truncated.csv.gz refused: cannot be"),
        "{summary}"
    );
    assert!(summary.contains("archive"), "{summary}");
    for refused in ["c23", "c24", "c25"] {
        assert_eq!(one(&lake, &format!("SELECT count(*) FROM system.steps WHERE step = 'bronze.{refused}' AND files_refused = 1")).await, 1);
    }

    assert_eq!(
        rows(&lake, "c28").await,
        vec![
            r(&["1", "multi\r\nline", "10", "2"]),
            r(&["4", "d", "40", "7"])
        ]
    );
    assert_eq!(
        rejects(&lake, "c28").await,
        vec![
            r(&["5", "expected 3 fields, found 2"]),
            r(&["6", "NUL byte in field 2"])
        ]
    );
    assert_eq!(
        rows(&lake, "c29").await,
        vec![r(&["1", "a,b", "10", "2"]), r(&["2", "b", "20", "3"])]
    );

    // Every source reconciles: lines landed = bronze rows + rejected rows.
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) FROM system.steps WHERE kind = 'source' AND NOT reconciled"
        )
        .await,
        0
    );
    assert_eq!(one(&lake, "SELECT count(*) FROM system.steps WHERE kind = 'source' AND lines_landed <> rows_written + rows_rejected").await, 0);

    // A second run takes nothing again and refuses the same files again.
    let again = build(dir.path());
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(rows(&lake, "c28").await.len(), 2);
    assert_eq!(
        one(&lake, "SELECT count(*) FROM quarantine.bronze_c07").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_breaks_mid_read_fails_its_source_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let landing = root.join("lake/landing");
    std::fs::create_dir_all(&landing).unwrap();
    std::fs::create_dir_all(root.join("sql/bronze")).unwrap();
    std::fs::write(
        landing.join("a_good.csv"),
        "id,name,amount\n1,a,10\n2,b,20\n",
    )
    .unwrap();
    std::fs::write(landing.join("other.csv"), "id,name,amount\n7,g,70\n").unwrap();
    // Past one batch of rows (32,768), so rows reach the writer before the
    // read breaks (the failpoint `ingest-read`, after each full batch).
    let rows = 50_000;
    let mut big = String::from("id,name,amount\n");
    for i in 0..rows {
        big.push_str(&format!("{i},n{},{}\n", i % 97, i % 1000));
    }
    std::fs::write(landing.join("b_big.csv"), big).unwrap();
    std::fs::write(
        root.join("sql/bronze/s.toml"),
        "files = \"landing/[ab]_*\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("sql/bronze/other.toml"),
        "files = \"landing/other.csv\"\n",
    )
    .unwrap();
    let args = ["run", "--lake", "lake", "--pipeline", "sql"];
    let lake = root.join("lake");

    let out = crate::lakehouse_with_env(&args, root, &[("LAKEHOUSE_FAILPOINTS", "ingest-read")]);
    let summary = text(&out);
    assert_eq!(out.status.code(), Some(1), "{summary}");
    assert!(
        summary.contains("source s: landing/b_big.csv: internal error: failpoint `ingest-read`"),
        "the error names the source and the file: {summary}"
    );
    // Nothing of the source is committed, not even its good file, which
    // another task parsed; no file is marked ingested. The other source is.
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.s").await, 0);
    assert_eq!(
        one(&lake, "SELECT count(*) FROM quarantine.bronze_s").await,
        0
    );
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.other").await, 1);
    assert_eq!(
        one(
            &lake,
            "SELECT count(*) FROM system.steps WHERE step = 'bronze.s' AND status = 'failed'"
        )
        .await,
        1
    );

    // The next run reads both files, each once.
    let out = lakehouse(&args, root);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        one(&lake, "SELECT count(*) FROM bronze.s").await,
        rows as i64 + 2
    );
    assert_eq!(
        one(
            &lake,
            "SELECT count(DISTINCT _source_line) FROM bronze.s WHERE _source_file = 'landing/b_big.csv'"
        )
        .await,
        rows as i64
    );
    assert_eq!(one(&lake, "SELECT count(*) FROM bronze.other").await, 1);
}

/// A file of `n` records: plain ones, quoted values holding line breaks,
/// CRLF ends, blank lines and short (rejected) rows.
fn mixed_records(n: usize) -> String {
    let mut out = String::from("id,name,note\n");
    for i in 0..n {
        let end = if i % 4 == 0 { "\r\n" } else { "\n" };
        match i % 9 {
            0 => out.push_str(&format!("{i},\"two\nlines\",x{end}")),
            1 => out.push_str(&format!("{i},short{end}")),
            2 => out.push_str(&format!("{end}{i},after a blank,y{end}")),
            _ => out.push_str(&format!("{i},name {i},note {}{end}", i * 3)),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_are_parsed_in_pieces_into_the_rows_one_reader_finds() {
    let dir = tempfile::tempdir().unwrap();
    // s1: pieces meet. s2: the middle of the file lies in a quoted value
    // holding line breaks, so its second piece starts inside it; the
    // pieces do not meet and the file is parsed whole.
    let mut quoted = String::from("id,name,note\n");
    for i in 0..10 {
        quoted.push_str(&format!("{i},n{i},x\n"));
    }
    quoted.push_str("10,\"");
    for k in 0..300 {
        quoted.push_str(&format!("line {k}\n"));
    }
    quoted.push_str("\",y\n");
    for i in 11..21 {
        quoted.push_str(&format!("{i},n{i},x\n"));
    }
    let lake_of = |name: &str| {
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("lake/landing")).unwrap();
        std::fs::create_dir_all(root.join("sql/bronze")).unwrap();
        std::fs::write(root.join("lake/landing/big1.csv"), mixed_records(3000)).unwrap();
        std::fs::write(root.join("lake/landing/big2.csv"), &quoted).unwrap();
        for (s, f) in [("s1", "big1.csv"), ("s2", "big2.csv")] {
            std::fs::write(
                root.join(format!("sql/bronze/{s}.toml")),
                format!("files = \"landing/{f}\"\n"),
            )
            .unwrap();
        }
        root
    };
    let run = |root: &Path, split: &str| {
        let out = crate::lakehouse_with_env(
            &["run", "--lake", "lake", "--pipeline", "sql"],
            root,
            &[
                ("LAKEHOUSE_INGEST_SPLIT_BYTES", split),
                ("RUST_LOG", "warn,lakehouse=info"),
                ("NO_COLOR", "1"),
            ],
        );
        let log = text(&out);
        assert!(out.status.success(), "{log}");
        log
    };
    let (pieces, whole) = (lake_of("pieces"), lake_of("whole"));
    let log = run(&pieces, "1000");
    run(&whole, "1000000000");

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        // big1 was read in pieces: one began past the header.
        let later = log
            .lines()
            .filter(|l| {
                l.contains("file parsed source=s1 file=landing/big1.csv")
                    && !l.contains("bytes=0..")
            })
            .count();
        assert!(later >= 1, "big1.csv was not read in pieces:\n{log}");
        assert!(
            log.contains("landing/big2.csv could not be split at byte"),
            "the broken seam of big2.csv is reported:\n{log}"
        );
    }
    for s in ["s1", "s2"] {
        let rows = format!("SELECT _source_file, CAST(_source_line AS VARCHAR) AS line, id, name, note FROM bronze.{s} ORDER BY _source_line");
        let rejects = format!("SELECT CAST(_source_line AS VARCHAR) AS line, CAST(_byte_offset AS VARCHAR) AS at, _reason, _raw_text FROM quarantine.bronze_{s} ORDER BY _source_line");
        let got = strings(&pieces.join("lake"), &rows).await;
        assert_eq!(got, strings(&whole.join("lake"), &rows).await, "{s}");
        assert_eq!(
            strings(&pieces.join("lake"), &rejects).await,
            strings(&whole.join("lake"), &rejects).await,
            "{s}"
        );
        let steps = format!("SELECT CAST(lines_landed AS VARCHAR) AS l, CAST(rows_written AS VARCHAR) AS w, CAST(rows_rejected AS VARCHAR) AS r, CAST(reconciled AS VARCHAR) AS ok FROM system.steps WHERE step = 'bronze.{s}'");
        assert_eq!(
            strings(&pieces.join("lake"), &steps).await,
            strings(&whole.join("lake"), &steps).await
        );
    }
    // The figures themselves: 3,000 records, every ninth short.
    assert_eq!(
        one(&pieces.join("lake"), "SELECT count(*) FROM bronze.s1").await,
        3000 - 334
    );
    assert_eq!(
        one(
            &pieces.join("lake"),
            "SELECT count(*) FROM quarantine.bronze_s1"
        )
        .await,
        334
    );
    assert_eq!(
        one(&pieces.join("lake"), "SELECT count(*) FROM bronze.s2").await,
        21
    );
    assert_eq!(
        one(
            &pieces.join("lake"),
            "SELECT max(_source_line) FROM bronze.s2"
        )
        .await,
        2 + 10 + 300 + 10
    );
}
