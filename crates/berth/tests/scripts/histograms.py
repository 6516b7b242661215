"""Reads a Prometheus text exposition on stdin with prometheus_client's own parser and prints,
per histogram series (metric and labels other than le), its buckets, _count and _sum as JSON.
Exits non-zero when the text does not parse."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    if family.type != "histogram":
        continue
    for s in family.samples:
        labels = {k: v for k, v in s.labels.items() if k != "le"}
        key = family.name + json.dumps(labels, sort_keys=True)
        h = out.setdefault(key, {"buckets": []})
        if s.name.endswith("_bucket"):
            h["buckets"].append([s.labels["le"], s.value])
        elif s.name.endswith("_count"):
            h["count"] = s.value
        elif s.name.endswith("_sum"):
            h["sum"] = s.value
print(json.dumps(out))
