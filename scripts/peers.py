#!/usr/bin/env python3
"""The example pipeline's work done by a peer engine, for scripts/bench:
read the landed orders CSV as text, apply the six reject rules, keep the
latest row per order_id, join stores and products, write silver partitioned
by (order_date, region) as Parquet, then both gold tables.

usage: peers.py duckdb|polars LAKE OUT
"""
import sys
from pathlib import Path

TS = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def duckdb_run(lake, out):
    import duckdb

    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"""
    CREATE VIEW bronze AS SELECT * FROM read_csv('{lake}/landing/orders/*.csv', header = true, all_varchar = true,
        ignore_errors = true, filename = true, null_padding = false, strict_mode = true);
    CREATE VIEW stores AS SELECT trim(store_id) store_id, max(trim(region)) region FROM read_csv('{lake}/landing/stores.csv', all_varchar = true) GROUP BY 1;
    CREATE VIEW products AS SELECT trim(product_id) product_id, max(trim(category)) category FROM read_csv('{lake}/landing/products.csv', all_varchar = true) GROUP BY 1;
    CREATE VIEW typed AS SELECT
        nullif(trim(order_id), '') order_id,
        coalesce(try_strptime(trim(order_ts), '{TS[0]}'), try_strptime(trim(order_ts), '{TS[1]}')) order_ts,
        nullif(trim(customer_id), '') customer_id, nullif(trim(store_id), '') store_id, nullif(trim(product_id), '') product_id,
        CASE WHEN regexp_full_match(trim(quantity), '[+-]?[0-9]{{1,9}}') THEN CAST(trim(quantity) AS INT) END quantity,
        CASE WHEN regexp_full_match(trim(unit_price), '-?[0-9]{{1,10}}(\\.[0-9]+)?') THEN CAST(trim(unit_price) AS DECIMAL(12,2)) END unit_price,
        trim(status) status,
        coalesce(try_strptime(trim(updated_at), '{TS[0]}'), try_strptime(trim(updated_at), '{TS[1]}')) updated_at,
        filename
      FROM bronze;
    CREATE TABLE silver AS
      SELECT t.order_id, t.order_ts, CAST(t.order_ts AS DATE) order_date, t.customer_id, t.store_id, s.region, t.product_id, p.category,
             t.quantity, t.unit_price, CAST(t.quantity * t.unit_price AS DECIMAL(14,2)) amount, t.status, t.updated_at
      FROM typed t JOIN stores s USING (store_id) LEFT JOIN products p USING (product_id)
      WHERE t.order_id IS NOT NULL AND t.customer_id IS NOT NULL AND t.order_ts IS NOT NULL AND t.quantity > 0 AND t.unit_price >= 0
      QUALIFY row_number() OVER (PARTITION BY t.order_id ORDER BY t.updated_at DESC NULLS LAST, t.filename DESC) = 1;
    COPY silver TO '{out}/silver' (FORMAT parquet, PARTITION_BY (order_date, region), OVERWRITE_OR_IGNORE true);
    COPY (SELECT order_date, region, count(*) orders,
                 coalesce(sum(quantity) FILTER (WHERE status = 'completed'), 0) units,
                 coalesce(sum(amount) FILTER (WHERE status = 'completed'), 0) revenue,
                 count(*) FILTER (WHERE status = 'returned') returns,
                 sum(amount) FILTER (WHERE status = 'completed') / nullif(count(*) FILTER (WHERE status = 'completed'), 0) avg_order_value
          FROM silver GROUP BY ALL) TO '{out}/daily' (FORMAT parquet, PARTITION_BY (order_date, region), OVERWRITE_OR_IGNORE true);
    COPY (SELECT order_date, region, category, sum(amount) revenue, sum(quantity) units FROM silver WHERE status = 'completed' GROUP BY ALL)
      TO '{out}/category' (FORMAT parquet, PARTITION_BY (order_date, region), OVERWRITE_OR_IGNORE true);
    """)
    return con.execute("SELECT count(*) FROM silver").fetchone()[0]


def polars_run(lake, out):
    import polars as pl

    def ts(c):
        c = pl.col(c).str.strip_chars()
        return pl.coalesce(c.str.strptime(pl.Datetime("us", "UTC"), TS[0], strict=False), c.str.strptime(pl.Datetime("us", "UTC"), TS[1], strict=False))

    # polars' CSV reader stops with "CSV malformed" on the stray quotes of the
    # dirty files, so it reads them with quoting off: lenient, and in its favour.
    files = sorted(str(p) for p in Path(lake, "landing/orders").glob("*.csv") if p.stat().st_size > 0)
    bronze = pl.concat(
        [pl.scan_csv(f, infer_schema=False, truncate_ragged_lines=True, quote_char=None).with_columns(pl.lit(f).alias("file")) for f in files],
        how="diagonal_relaxed",
    )
    stores = pl.scan_csv(f"{lake}/landing/stores.csv", infer_schema=False).group_by(pl.col("store_id").str.strip_chars()).agg(pl.col("region").str.strip_chars().max())
    products = pl.scan_csv(f"{lake}/landing/products.csv", infer_schema=False).group_by(pl.col("product_id").str.strip_chars()).agg(pl.col("category").str.strip_chars().max())
    q = pl.col("quantity").str.strip_chars()
    p = pl.col("unit_price").str.strip_chars()
    typed = bronze.select(
        pl.col("order_id").str.strip_chars().replace("", None).alias("order_id"),
        ts("order_ts").alias("order_ts"),
        pl.col("customer_id").str.strip_chars().replace("", None).alias("customer_id"),
        pl.col("store_id").str.strip_chars().alias("store_id"),
        pl.col("product_id").str.strip_chars().alias("product_id"),
        pl.when(q.str.contains(r"^[+-]?[0-9]{1,9}$")).then(q.cast(pl.Int32, strict=False)).alias("quantity"),
        pl.when(p.str.contains(r"^-?[0-9]{1,10}(\.[0-9]+)?$")).then(p.cast(pl.Decimal(12, 2), strict=False)).alias("unit_price"),
        pl.col("status").str.strip_chars(),
        ts("updated_at").alias("updated_at"),
        pl.col("file"),
    )
    silver = (
        typed.filter(pl.col("order_id").is_not_null() & pl.col("customer_id").is_not_null() & pl.col("order_ts").is_not_null() & (pl.col("quantity") > 0) & (pl.col("unit_price") >= 0))
        .join(stores, on="store_id", how="inner")
        .join(products, on="product_id", how="left")
        .sort(["updated_at", "file"], descending=True, nulls_last=True)
        .unique(subset=["order_id"], keep="first")
        .with_columns(pl.col("order_ts").dt.date().alias("order_date"), (pl.col("quantity").cast(pl.Decimal(10, 0)) * pl.col("unit_price")).cast(pl.Decimal(14, 2)).alias("amount"))
        .drop("file")
        .collect()
    )
    silver.write_parquet(f"{out}/silver", partition_by=["order_date", "region"])
    done = pl.col("status") == "completed"
    daily = silver.group_by(["order_date", "region"]).agg(
        pl.len().alias("orders"), pl.col("quantity").filter(done).sum().alias("units"), pl.col("amount").filter(done).sum().alias("revenue"),
        (pl.col("status") == "returned").sum().alias("returns"), (pl.col("amount").filter(done).sum() / done.sum()).alias("avg_order_value"),
    )
    daily.write_parquet(f"{out}/daily", partition_by=["order_date", "region"])
    silver.filter(done).group_by(["order_date", "region", "category"]).agg(pl.col("amount").sum().alias("revenue"), pl.col("quantity").sum().alias("units")).write_parquet(f"{out}/category", partition_by=["order_date", "region"])
    return silver.height


if __name__ == "__main__":
    engine, lake, out = sys.argv[1], Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = {"duckdb": duckdb_run, "polars": polars_run}[engine](lake, out)
    print(f"{engine}: silver rows {rows}")
