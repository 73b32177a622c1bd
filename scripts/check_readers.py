#!/usr/bin/env python3
"""Read a lake built by `lakehouse run` with independent readers and print the
example pipeline's figures as JSON, one entry per reader:

  deltalake  delta-rs python (DeltaTable.to_pyarrow_table)
  polars     polars.read_delta
  duckdb     delta_scan when the delta extension is available; otherwise
             read_parquet over exactly the files the Delta log lists as
             active (hive partitioning), which is how BI tools read the
             Parquet files directly

usage: check_readers.py LAKE
"""
import json
import sys
from decimal import Decimal
from pathlib import Path


def figures_from(silver_rows, silver_amount, daily_rows, daily_orders, daily_revenue, cat_rows, cat_revenue, dtypes):
    return {
        "silver_rows": int(silver_rows),
        "silver_amount": str(Decimal(str(silver_amount)).quantize(Decimal("0.01"))),
        "daily_rows": int(daily_rows),
        "daily_orders": int(daily_orders),
        "daily_revenue": str(Decimal(str(daily_revenue)).quantize(Decimal("0.01"))),
        "category_rows": int(cat_rows),
        "category_revenue": str(Decimal(str(cat_revenue)).quantize(Decimal("0.01"))),
        "types": dtypes,
    }


def with_deltalake(lake):
    from deltalake import DeltaTable

    s = DeltaTable(str(lake / "silver/orders")).to_pyarrow_table()
    d = DeltaTable(str(lake / "gold/daily_region_sales")).to_pyarrow_table()
    c = DeltaTable(str(lake / "gold/category_daily")).to_pyarrow_table()
    import pyarrow.compute as pc

    types = {f.name: str(f.type) for f in s.schema if f.name in ("order_ts", "order_date", "amount", "unit_price")}
    return figures_from(
        s.num_rows, pc.sum(s["amount"]).as_py(), d.num_rows, pc.sum(d["orders"]).as_py(),
        pc.sum(d["revenue"]).as_py(), c.num_rows, pc.sum(c["revenue"]).as_py(), types,
    )


def with_polars(lake):
    import polars as pl

    s = pl.read_delta(str(lake / "silver/orders"))
    d = pl.read_delta(str(lake / "gold/daily_region_sales"))
    c = pl.read_delta(str(lake / "gold/category_daily"))
    types = {k: str(v) for k, v in s.schema.items() if k in ("order_ts", "order_date", "amount", "unit_price")}
    return figures_from(
        s.height, s["amount"].sum(), d.height, d["orders"].sum(), d["revenue"].sum(),
        c.height, c["revenue"].sum(), types,
    )


def with_duckdb(lake):
    import duckdb
    from deltalake import DeltaTable

    con = duckdb.connect()
    mode = "delta_scan"
    try:
        con.execute("LOAD delta")
        src = lambda t: f"delta_scan('{lake / t}')"
    except Exception:
        mode = "read_parquet(active files)"

        def src(t):
            files = DeltaTable(str(lake / t)).file_uris()
            if not files:
                raise SystemExit(f"{t} has no files")
            listed = ", ".join("'" + f.replace("file://", "") + "'" for f in files)
            return f"read_parquet([{listed}], hive_partitioning = true)"

    one = lambda q: con.execute(q).fetchone()
    s = one(f"SELECT count(*), sum(amount) FROM {src('silver/orders')}")
    d = one(f"SELECT count(*), sum(orders), sum(revenue) FROM {src('gold/daily_region_sales')}")
    c = one(f"SELECT count(*), sum(revenue) FROM {src('gold/category_daily')}")
    types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src('silver/orders')}").fetchall() if r[0] in ("order_ts", "order_date", "amount", "unit_price")}
    out = figures_from(s[0], s[1], d[0], d[1], d[2], c[0], c[1], types)
    out["mode"] = mode
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    lake = Path(sys.argv[1]).resolve()
    result = {}
    for name, fn in (("deltalake", with_deltalake), ("polars", with_polars), ("duckdb", with_duckdb)):
        result[name] = fn(lake)
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
