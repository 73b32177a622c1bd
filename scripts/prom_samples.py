"""Reads Prometheus text format (a file, or stdin with `-`) with
prometheus_client's own parser and prints its samples as JSON:
[{"name": ..., "labels": {...}, "value": ...}, ...]. The tests check our
metrics output through it, so a format error fails them."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read() if sys.argv[1] == "-" else open(sys.argv[1]).read()
samples = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        samples.append({"name": s.name, "type": family.type, "labels": s.labels, "value": s.value})
print(json.dumps(samples))
