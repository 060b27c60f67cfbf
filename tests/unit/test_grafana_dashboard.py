"""Goal: the dashboard JSON is well formed and the query parser finds exactly the metric names a
PromQL expression selects (the integration test checks those names against real brokers)."""

from __future__ import annotations

from tests.dashboard_queries import (
    dashboard_queries,
    load_dashboard,
    metric_names,
    template_metric_names,
)


def test_metric_names_skip_functions_labels_ranges_keywords_and_variables() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (api, le) (rate(broker_request_latency_seconds_bucket"
        '{instance=~"$instance",api!="fetch"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"broker_request_latency_seconds_bucket"}
    ratio = (
        "sum without (topic) (rate(a_sum[5m] offset 1h)) / on (instance) group_left (node) "
        "b_count > bool 1e3 and c unless ignoring (x) d"
    )
    assert metric_names(ratio) == {"a_sum", "b_count", "c", "d"}
    assert metric_names('count(x{job="up"})') == {"x"}


def test_template_queries_name_their_series_only() -> None:
    assert template_metric_names("label_values(broker_connections, instance)") == {
        "broker_connections"
    }
    assert template_metric_names("label_values(instance)") == set()
    assert template_metric_names("query_result(max by (x) (m))") == {"m"}


def test_the_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    # Every query selects at least one of the broker's own metrics, and nothing else.
    for where, names in dashboard_queries(dashboard):
        assert names and all(name.startswith("broker_") for name in names), where
