"""Parses a Prometheus text exposition from stdin with the official Python
client's parser (independent of mcp-meter's writer) and prints the samples
as JSON: [{"name", "labels", "value"}]. Exits non-zero on a parse error."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> None:
    text = sys.stdin.read()
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.append(
                {"name": sample.name, "labels": sample.labels, "value": sample.value,
                 "type": family.type}
            )
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
