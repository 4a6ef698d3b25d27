#!/usr/bin/env python3
"""Parse a Prometheus scrape with the Prometheus project's own Python parser, for sluice's tests.

  parse_metrics.py < scrape.txt

sluice serves the OpenMetrics text format; it is read with prometheus_client's strict OpenMetrics
parser, and (as Prometheus' classic text format is a subset reader of the same lines) with
prometheus_client.parser too, so a scrape either would refuse fails the test.

Prints one JSON object: {"types": {family: type}, "samples": [[name, {labels}, value], ...]}.
Exit status 1, with the parser's error on stderr, when the text does not parse.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_families


def main():
    text = sys.stdin.read()
    try:
        families = list(openmetrics_families(text))
        # The classic parser must read it too (it ignores the OpenMetrics-only "# EOF" and "# UNIT").
        list(prometheus_families(text))
    except Exception as e:  # the parsers raise ValueError and friends
        sys.stderr.write("parse_metrics.py: the scrape does not parse: {!r}\n".format(e))
        return 1
    out = {"types": {}, "samples": []}
    for family in families:
        out["types"][family.name] = family.type
        for sample in family.samples:
            out["samples"].append([sample.name, sample.labels, sample.value])
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
