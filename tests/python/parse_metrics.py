"""Parses Prometheus text exposition from stdin with the reference parser (prometheus_client)
and prints every sample as JSON: [{"name", "labels", "value"}]. Exits non-zero if it does not
parse."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = [
    {"name": s.name, "labels": s.labels, "value": s.value}
    for family in text_string_to_metric_families(sys.stdin.read())
    for s in family.samples
]
print(json.dumps(samples))
