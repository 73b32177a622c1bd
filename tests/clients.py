"""Real Python clients against a running `lakehouse serve`: the ADBC Flight
SQL driver, psycopg, and SQLAlchemy's reflection (what Superset runs).
Prints one JSON object of answers for tests/it/serve.rs to check.

usage: clients.py FLIGHT_ADDR PG_ADDR USER PASSWORD
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")

import adbc_driver_flightsql.dbapi as flightsql
import psycopg
import sqlalchemy

flight, pg, user, password = sys.argv[1:5]
host, port = pg.rsplit(":", 1)
BY_REGION = (
    "SELECT region, sum(revenue) AS revenue FROM gold.daily_region_sales "
    "GROUP BY region ORDER BY region"
)
out = {}

with flightsql.connect(
    f"grpc://{flight}", db_kwargs={"username": user, "password": password}
) as conn:
    out["adbc_vendor"] = conn.adbc_get_info().get("vendor_name")
    with conn.cursor() as cur:
        cur.execute(BY_REGION)
        table = cur.fetch_arrow_table()
        out["adbc_revenue"] = [str(v) for v in table.column("revenue").to_pylist()]
        # Bound parameters: Postgres-style `$1` and JDBC-style `?`.
        bound = []
        for sql, params in [
            ("SELECT sum(revenue) AS r FROM gold.daily_region_sales WHERE region = $1", ("east",)),
            ("SELECT sum(revenue) AS r FROM gold.daily_region_sales WHERE region = ? AND orders >= ?", ("west", 0)),
        ]:
            cur.execute(sql, parameters=params)
            bound.append(str(cur.fetch_arrow_table().column("r")[0].as_py()))
        out["adbc_bound"] = bound
        try:
            cur.execute("DROP TABLE gold.daily_region_sales")
            out["adbc_refused"] = "accepted"
        except Exception as e:  # the driver's own error type
            out["adbc_refused"] = str(e)

with psycopg.connect(
    host=host, port=port, user=user, password=password, dbname="lakehouse"
) as conn:
    rows = conn.execute(
        "SELECT region, sum(revenue) AS revenue FROM gold.daily_region_sales "
        "WHERE region = ANY(%s) GROUP BY region ORDER BY region",
        (["central", "east", "north", "south", "west"],),
    ).fetchall()
    out["psycopg_revenue"] = [str(r[1]) for r in rows]

engine = sqlalchemy.create_engine(
    sqlalchemy.URL.create(
        "postgresql+psycopg",
        username=user,
        password=password,
        host=host,
        port=int(port),
        database="lakehouse",
    )
)
inspector = sqlalchemy.inspect(engine)
out["sqlalchemy_schemas"] = sorted(
    s for s in inspector.get_schema_names() if s not in ("pg_catalog", "information_schema")
)
out["sqlalchemy_gold_tables"] = sorted(inspector.get_table_names(schema="gold"))
engine.dispose()
print(json.dumps(out))
