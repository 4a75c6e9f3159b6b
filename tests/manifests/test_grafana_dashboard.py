"""kubernetes/grafana-dashboard.json plots every metric the operator defines, and only those."""

import json
import re

import pytest

from operator_engine import metrics

from ._support import KUBERNETES_DIR

DASHBOARD = KUBERNETES_DIR / "grafana-dashboard.json"
METRIC_TOKEN = re.compile(r"\boperator_engine_[a-z_]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def panels(dashboard):
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exprs(dashboard):
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def test_dashboard_is_a_grafana_dashboard_model(dashboard):
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(dashboard):
        assert panel["type"] and panel["title"], panel
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_reads_a_prometheus_datasource_chosen_by_a_variable(dashboard):
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    chosen = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    for panel in panels(dashboard):
        assert panel["datasource"] == chosen, panel["title"]
        for target in panel.get("targets", []):
            assert target.get("datasource", chosen) == chosen, panel["title"]


def test_every_metric_the_operator_defines_is_plotted(dashboard):
    plotted = set(METRIC_TOKEN.findall(" ".join(exprs(dashboard))))
    names = metrics.metric_names()
    assert len(names) >= 9
    for name in names:
        assert any(series == name or series.startswith(name + "_") for series in plotted), f"{name} is not plotted"


def test_every_plotted_series_is_one_the_operator_defines(dashboard):
    names = set(metrics.metric_names())
    for expr in exprs(dashboard):
        assert expr.count("(") == expr.count(")"), expr
        for series in METRIC_TOKEN.findall(expr):
            base = next((series[: -len(s)] for s in HISTOGRAM_SERIES if series.endswith(s)), series)
            assert series in names or base in names, f"{series} in {expr!r} is not a metric of the operator"
