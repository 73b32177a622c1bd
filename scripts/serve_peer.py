"""DuckDB answering the same gold queries in-process, for scripts/bench-serve.

DuckDB reads the Delta table's active Parquet files (from delta-rs python)
with hive partitioning: the delta extension cannot be downloaded here. The
file list is read once, before timing; lakehouse re-reads the Delta log at
every query.

usage: serve_peer.py LAKE CLIENTS SECONDS SQL   -> one JSON line
"""
import json
import sys
import threading
import time

import duckdb
from deltalake import DeltaTable

lake, clients, seconds, sql = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
con = duckdb.connect()
con.execute("CREATE SCHEMA gold")
for name in ("daily_region_sales", "category_daily"):
    files = DeltaTable(f"{lake}/gold/{name}").file_uris()
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(
        f"CREATE VIEW gold.{name} AS SELECT * FROM read_parquet([{listed}], hive_partitioning = true)"
    )

latencies = []
lock = threading.Lock()
deadline = time.monotonic() + seconds


def client():
    cur = con.cursor()
    mine = []
    while time.monotonic() < deadline:
        t = time.perf_counter()
        rows = cur.execute(sql).fetchall()
        assert rows
        mine.append(time.perf_counter() - t)
    with lock:
        latencies.extend(mine)


threads = [threading.Thread(target=client) for _ in range(clients)]
start = time.monotonic()
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = max(time.monotonic() - start, seconds)
latencies.sort()
pct = lambda p: latencies[min(int(len(latencies) * p), len(latencies) - 1)] * 1000
print(json.dumps({"protocol": "duckdb", "clients": clients, "queries": len(latencies),
                  "qps": round(len(latencies) / elapsed, 1), "p50_ms": round(pct(0.5), 2),
                  "p99_ms": round(pct(0.99), 2)}))
