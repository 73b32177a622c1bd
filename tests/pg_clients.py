"""Postgres drivers and tools against a running `lakehouse serve`, the way BI
tools use them: SQLAlchemy's Inspector (2.x + psycopg here; 1.4 + psycopg2,
Superset's stack, when run with `sa14`), pandas.read_sql_table, psycopg's
named (server-side) cursor and COPY TO STDOUT in text, CSV and binary,
connectorx's default protocol, and the ADBC Postgres driver with a bound
parameter. Prints one JSON object of answers for tests/it/serve.rs to check.

usage: pg_clients.py PG_ADDR USER PASSWORD [sa14]
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")

import sqlalchemy

pg, user, password = sys.argv[1:4]
sa14 = len(sys.argv) > 4 and sys.argv[4] == "sa14"
host, port = pg.rsplit(":", 1)
from urllib.parse import quote

# Passwords with spaces and symbols must be escaped in a URI.
URI = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/lakehouse"
TABLE = "daily_region_sales"
out = {"sqlalchemy_version": sqlalchemy.__version__}

driver = "postgresql+psycopg2" if sa14 else "postgresql+psycopg"
engine = sqlalchemy.create_engine(URI.replace("postgresql://", f"{driver}://", 1))
inspector = sqlalchemy.inspect(engine)
# Every Inspector call Superset makes when a physical dataset is added.
columns = inspector.get_columns(TABLE, schema="gold")
out["columns"] = [[c["name"], str(c["type"]), c["nullable"]] for c in columns]
out["pk"] = inspector.get_pk_constraint(TABLE, schema="gold")["constrained_columns"]
out["fks"] = inspector.get_foreign_keys(TABLE, schema="gold")
out["indexes"] = inspector.get_indexes(TABLE, schema="gold")
out["unique"] = inspector.get_unique_constraints(TABLE, schema="gold")
out["checks"] = inspector.get_check_constraints(TABLE, schema="gold")
out["comment"] = inspector.get_table_comment(TABLE, schema="gold")["text"]
out["views"] = inspector.get_view_names(schema="gold")
out["has_table"] = inspector.has_table(TABLE, schema="gold")
with engine.connect() as conn:
    rows = conn.execute(
        sqlalchemy.text(
            "SELECT region, sum(revenue), count(*) FROM gold.daily_region_sales "
            "GROUP BY region ORDER BY region"
        )
    )
    out["sqlalchemy_keys"] = list(rows.keys())
    out["sqlalchemy_rows"] = [[r[0], str(r[1]), r[2]] for r in rows]
    # SQLAlchemy's stream_results is a server-side cursor.
    streamed = conn.execution_options(stream_results=True, max_row_buffer=7).execute(
        sqlalchemy.text("SELECT order_date, region FROM gold.daily_region_sales")
    )
    out["streamed_rows"] = sum(1 for _ in streamed)

if not sa14:
    import pandas

    df = pandas.read_sql_table(TABLE, engine, schema="gold")
    out["pandas_shape"] = list(df.shape)
    out["pandas_revenue"] = f"{df['revenue'].sum():.2f}"

    import psycopg

    with psycopg.connect(
        host=host, port=port, user=user, password=password, dbname="lakehouse"
    ) as conn:
        # A named cursor is DECLARE … CURSOR / FETCH / CLOSE on the server.
        with conn.cursor(name="browse") as cur:
            cur.itersize = 9
            cur.execute("SELECT order_date, region, revenue FROM gold.daily_region_sales")
            out["named_cursor_rows"] = sum(1 for _ in cur)
        copies = {}
        for fmt in ["text", "csv", "binary"]:
            with conn.cursor() as cur:
                sql = (
                    "COPY (SELECT region, revenue FROM gold.daily_region_sales "
                    "ORDER BY order_date, region) TO STDOUT"
                )
                if fmt != "text":
                    sql += f" WITH (FORMAT {fmt})"
                with cur.copy(sql) as copy:
                    if fmt == "csv":
                        # psycopg parses text and binary rows; CSV is read raw.
                        import csv, io

                        raw = b"".join(bytes(chunk) for chunk in copy).decode()
                        rows = [r for r in csv.reader(io.StringIO(raw))]
                    else:
                        if fmt == "binary":
                            copy.set_types(["text", "numeric"])
                        rows = [[r[0], str(r[1])] for r in copy.rows()]
                copies[fmt] = rows
        out["copy"] = copies

    import connectorx

    table = connectorx.read_sql(
        URI,
        "SELECT region, sum(revenue) AS revenue FROM gold.daily_region_sales "
        "GROUP BY region ORDER BY region",
        return_type="arrow",
    )
    out["connectorx_type"] = str(table.schema.field("revenue").type)
    out["connectorx_revenue"] = [str(v) for v in table.column("revenue").to_pylist()]

    import adbc_driver_postgresql.dbapi as adbc_pg

    with adbc_pg.connect(URI) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT region, sum(revenue) AS revenue FROM gold.daily_region_sales "
                "WHERE region = $1 GROUP BY region",
                parameters=("east",),
            )
            t = cur.fetch_arrow_table()
            out["adbc_pg_east"] = [str(v) for v in t.column("revenue").to_pylist()]

engine.dispose()
print(json.dumps(out, default=str))
