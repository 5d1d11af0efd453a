"""Parses a /metrics answer (OpenMetrics text, on stdin) with the Prometheus
project's own Python parser, prometheus_client, which refuses what a
Prometheus server would refuse.

Prints one JSON object: {"families": [{"name", "type", "samples": [{"name",
"labels", "value"}]}]}; exits 1 with the parser's message on stderr if the
text does not parse.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> None:
    text = sys.stdin.read()
    try:
        families = [
            {
                "name": family.name,
                "type": family.type,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": s.value}
                    for s in family.samples
                ],
            }
            for family in text_string_to_metric_families(text)
        ]
    except ValueError as e:
        print(f"not OpenMetrics text: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"families": families}))


if __name__ == "__main__":
    main()
