use std::path::Path;

use super::*;

fn pipeline(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Pipeline>) {
    let dir = tempfile::tempdir().unwrap();
    for (path, body) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let p = Pipeline::load(dir.path());
    (dir, p)
}

fn err(files: &[(&str, &str)]) -> String {
    let (dir, p) = pipeline(files);
    let e = p.expect_err("the pipeline should be refused").to_string();
    e.replace(&format!("{}/", dir.path().display()), "")
}

const SRC: (&str, &str) = ("bronze/orders.toml", "files = \"landing/*.csv\"\n");

#[test]
fn models_run_after_what_they_read_whatever_their_names() {
    let (_d, p) = pipeline(&[
        SRC,
        (
            "gold/a_report.sql",
            "SELECT * FROM silver.z_clean JOIN gold.b_base USING (id)",
        ),
        (
            "gold/b_base.sql",
            "WITH x AS (SELECT * FROM silver.z_clean) SELECT * FROM x",
        ),
        ("silver/z_clean.sql", "SELECT * FROM bronze.orders"),
    ]);
    let p = p.unwrap();
    let order: Vec<String> = p.models.iter().map(|m| m.table()).collect();
    assert_eq!(order, ["silver.z_clean", "gold.b_base", "gold.a_report"]);
    assert_eq!(
        p.models[1].inputs,
        ["silver.z_clean"],
        "CTE names are not inputs"
    );
}

#[test]
fn unknown_setting_names_file_and_line() {
    let e = err(&[
        SRC,
        ("silver/o.sql", "SELECT * FROM bronze.orders"),
        (
            "silver/o.toml",
            "mode = \"append\"\n\npartitioned_by = [\"d\"]\n",
        ),
    ]);
    assert!(
        e.starts_with("silver/o.toml:3: unknown setting `partitioned_by`"),
        "{e}"
    );
}

#[test]
fn unknown_source_setting_and_bad_values_name_file_and_line() {
    let e = err(&[("bronze/orders.toml", "files = \"x\"\ndelimeter = \";\"\n")]);
    assert!(
        e.starts_with("bronze/orders.toml:2: unknown setting `delimeter`"),
        "{e}"
    );
    let e = err(&[("bronze/orders.toml", "files = \"x\"\ndelimiter = \";;\"\n")]);
    assert!(
        e.starts_with("bronze/orders.toml:2: delimiter must be a single ASCII character"),
        "{e}"
    );
    // A delimiter equal to the quote, or a line break, can never split rows.
    let e = err(&[(
        "bronze/orders.toml",
        "files = \"x\"\ndelimiter = \"'\"\nquote = \"'\"\n",
    )]);
    assert!(
        e.starts_with("bronze/orders.toml:3: delimiter and quote are both `'`"),
        "{e}"
    );
    let e = err(&[("bronze/orders.toml", "files = \"x\"\ndelimiter = \"\\n\"\n")]);
    assert!(
        e.starts_with("bronze/orders.toml:2: delimiter cannot be a line break"),
        "{e}"
    );
    let e = err(&[("bronze/orders.toml", "files = \"x\"\nquote = \"\\r\"\n")]);
    assert!(
        e.starts_with("bronze/orders.toml:2: quote cannot be a line break"),
        "{e}"
    );
    let e = err(&[
        SRC,
        ("silver/o.sql", "SELECT 1"),
        ("silver/o.toml", "mode = \"upsert\"\n"),
    ]);
    assert!(
        e.starts_with("silver/o.toml:1: unknown variant `upsert`"),
        "{e}"
    );
}

#[test]
fn sql_that_does_not_parse_names_file_and_line() {
    let e = err(&[
        SRC,
        (
            "silver/o.sql",
            "SELECT a,\n  b\nFROM bronze.orders\nWHERE (a = 1\n",
        ),
    ]);
    assert!(e.starts_with("silver/o.sql:4: SQL does not parse"), "{e}");
    let e = err(&[
        SRC,
        (
            "silver/o.sql",
            "SELECT a\nFROM bronze.orders\nWHERE a = = 1\nLIMIT 3\n",
        ),
    ]);
    assert!(e.starts_with("silver/o.sql:3: SQL does not parse"), "{e}");
}

#[test]
fn a_model_must_be_one_select() {
    let e = err(&[SRC, ("silver/o.sql", "DELETE FROM bronze.orders")]);
    assert!(
        e.contains("silver/o.sql:1: a model must be a SELECT query"),
        "{e}"
    );
    let e = err(&[SRC, ("silver/o.sql", "SELECT 1; SELECT 2")]);
    assert!(e.contains("exactly one SELECT statement, found 2"), "{e}");
}

#[test]
fn reading_an_undefined_or_unqualified_table_is_refused() {
    let e = err(&[
        SRC,
        (
            "silver/o.sql",
            "SELECT *\nFROM bronze.orders o\nJOIN silver.customers c ON o.id = c.id",
        ),
    ]);
    assert!(e.starts_with("silver/o.sql:3: reads table `silver.customers`, which no source or model defines. Known tables: bronze.orders, silver.o"), "{e}");
    let e = err(&[SRC, ("silver/o.sql", "SELECT * FROM orders")]);
    assert!(
        e.contains("silver/o.sql:1: table `orders` must be qualified with its layer"),
        "{e}"
    );
}

#[test]
fn cycles_are_named() {
    let e = err(&[
        SRC,
        ("silver/a.sql", "SELECT * FROM silver.b"),
        ("silver/b.sql", "SELECT * FROM silver.a"),
    ]);
    assert_eq!(e, "dependency cycle between models: silver.a -> silver.b -> silver.a. Break the cycle by removing one of these references.");
    let e = err(&[SRC, ("silver/a.sql", "SELECT * FROM silver.a")]);
    assert!(e.contains("silver.a -> silver.a"), "{e}");
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let e = err(&[
        SRC,
        ("silver/o.sql", "SELECT 1 AS id"),
        ("silver/o.toml", "mode = \"merge\"\n"),
    ]);
    assert!(e.contains("needs `unique_key"), "{e}");
    let e = err(&[
        SRC,
        ("silver/o.sql", "SELECT 1 AS id"),
        (
            "silver/o.toml",
            "[[expect]]\nname = \"a\"\ncheck = \"id >\"\naction = \"drop\"\n",
        ),
    ]);
    assert!(
        e.starts_with("silver/o.toml:1: check `id >` does not parse"),
        "{e}"
    );
    let e = err(&[
        SRC,
        ("silver/o.sql", "SELECT 1"),
        (
            "silver/o.toml",
            "[[expect]]\nname = \"a\"\ncheck = \"true\"\naction = \"explode\"\n",
        ),
    ]);
    assert!(e.contains("unknown variant `explode`"), "{e}");
    let e = err(&[("bronze/orders.sql", "SELECT 1")]);
    assert!(e.contains("bronze tables are sources"), "{e}");
    let e = err(&[SRC, ("silver/Bad-Name.sql", "SELECT 1")]);
    assert!(e.contains("`Bad-Name` is not a valid table name"), "{e}");
}

#[test]
fn the_shipped_example_pipeline_loads() {
    let p = Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("sql")).unwrap();
    assert_eq!(p.sources.len(), 4);
    let order: Vec<String> = p.models.iter().map(|m| m.table()).collect();
    assert_eq!(
        order,
        [
            "silver.orders",
            "gold.category_daily",
            "gold.daily_region_sales"
        ]
    );
    let rules: Vec<&str> = p.models[0]
        .settings
        .expectations
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        rules,
        [
            "missing_order_id",
            "missing_customer_id",
            "bad_order_ts",
            "bad_quantity",
            "bad_unit_price",
            "unknown_store_id",
            "known_status"
        ]
    );
}

#[test]
fn nearest_names_a_likely_typo_and_nothing_else() {
    let names = ["login_at", "user_id", "device", "login_id"];
    assert_eq!(
        nearest("login_ts", names).as_deref(),
        Some("`login_at` or `login_id`")
    );
    assert_eq!(nearest("USERID", names).as_deref(), Some("`user_id`"));
    assert_eq!(nearest("devise", names).as_deref(), Some("`device`"));
    assert_eq!(nearest("amount", names), None);
    // An exact match is not a suggestion.
    assert_eq!(nearest("device", ["device"]), None);
    assert_eq!(nearest("x", ["y"]), None);
}
