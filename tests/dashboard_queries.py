"""The metric names a Grafana dashboard queries, and the sample names a /metrics page exports.

Used by the dashboard tests (tests/unit/test_grafana_dashboard.py for the parsing,
tests/integration/server/test_metrics_dashboard.py against real brokers). PromQL is not parsed
in full: label matchers, range selectors, string literals, grouping clauses and Grafana variables
are removed first, and what is left that looks like an identifier and is not called like a
function or used as a keyword is a metric name. That covers what dashboards contain; anything it
misreads shows up as a "missing metric" with its expression, never as a silent pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboard.json"

# PromQL words that are neither metrics nor followed by a parenthesis.
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Grafana's Prometheus template functions whose first argument is a PromQL expression.
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((.*)\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """The metric names one PromQL expression selects."""
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("", text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent or unit of a number: 1e3, 5m
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function call
        if match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def template_metric_names(query: str) -> set[str]:
    """The metric names of a Grafana template variable query (label_values, query_result)."""
    for pattern in (_LABEL_VALUES, _QUERY_RESULT):
        match = pattern.match(query)
        if match is not None:
            return metric_names(match.group(1))
    return set()  # label_values(label) or metrics(regex): no series selected


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, set[str]]]:
    """(where, metric names) for every panel target and template variable of `dashboard`."""
    found: list[tuple[str, set[str]]] = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                where = f"panel {panel.get('title')!r} {target.get('refId')}: {target['expr']}"
                found.append((where, metric_names(target["expr"])))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            text = query.get("query", "") if isinstance(query, dict) else str(query)
            found.append((f"variable {variable['name']!r}: {text}", template_metric_names(text)))
    return found


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def exported_sample_names(page: str) -> set[str]:
    """Every sample name on a /metrics page: counters as `x_total`, histograms as `x_bucket`,
    `x_count`, `x_sum`, exactly the names a query selects."""
    return {
        sample.name for family in text_string_to_metric_families(page) for sample in family.samples
    }
