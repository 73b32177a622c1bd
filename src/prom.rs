//! Prometheus text exposition format (version 0.0.4), written by hand: the
//! run's metrics file and the server's `/metrics` share it. Each family gets
//! its `# HELP` and `# TYPE` once, before its first sample; label values are
//! escaped as the format says.

use std::collections::HashSet;
use std::fmt::Write;

#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    declared: HashSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a family; samples of it follow. Declaring twice is a no-op.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        if self.declared.insert(name.to_string()) {
            let kind = match kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
                Kind::Histogram => "histogram",
            };
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
        }
        self
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&number(value));
        self.out.push('\n');
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Whole numbers without a fraction (row counts stay exact), others as Rust
/// prints them, and the format's spellings of infinities and NaN.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Writes `text` to `path` so that a reader sees the old file or the new
/// one, never a part: a temporary file beside it, then a rename.
pub fn replace_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    // node_exporter's textfile collector reads `*.prom` only, so the
    // temporary name must not end in `.prom`.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_declared_once_and_labels_escaped() {
        let mut e = Exposition::new();
        e.family("x_rows", Kind::Gauge, "Rows.\nTwo lines").sample(
            "x_rows",
            &[("table", "a\"b\\c\nd")],
            3.0,
        );
        e.family("x_rows", Kind::Gauge, "again")
            .sample("x_rows", &[], 0.5);
        assert_eq!(
            e.finish(),
            "# HELP x_rows Rows.\\nTwo lines\n# TYPE x_rows gauge\nx_rows{table=\"a\\\"b\\\\c\\nd\"} 3\nx_rows 0.5\n"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number(12345678901.0), "12345678901");
        assert_eq!(number(1.25), "1.25");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(-3.0), "-3");
    }

    #[test]
    fn replace_file_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lakehouse.prom");
        replace_file(&path, "a 1\n").unwrap();
        replace_file(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
