"""The PrometheusRule's PromQL: every expression parses (promql-parser, the Rust PromQL
parser), uses only metrics cloak-kbs exports (issue 3's list, as registered in
kbs/server/src/metrics.rs) with their real label names, and the two alerts the
deployment needs exist with the matchers that make them fire."""

import re

import promql_parser
import pytest

from conftest import find

# name -> label names, as cloak-kbs exposes them at /metrics.
KBS_METRICS = {
    "coco_attestation_attempts_total": {"pod", "namespace"},
    "coco_attestation_success_total": {"pod", "namespace", "measurement_match"},
    "coco_attestation_failure_total": {"pod", "namespace", "reason"},
    "coco_kbs_resource_releases_total": {"resource"},
    "coco_kbs_resource_denials_total": {"resource", "reason"},
}
# Labels every scraped series carries besides its own.
TARGET_LABELS = {"job", "instance"}


def rules():
    return [r for g in find("PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def selectors(expr: str) -> list:
    """(metric name, [(label, op, value)]) for every vector selector in the expression."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, [(m.name, m.op, m.value) for m in node.matchers.matchers]))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_expression_parses_and_uses_known_metrics(rule):
    sels = selectors(rule["expr"])
    assert sels, "expression selects no series"
    for name, matchers in sels:
        assert name in KBS_METRICS, f"{name} is not exported by cloak-kbs"
        for label, _op, _value in matchers:
            assert label in KBS_METRICS[name] | TARGET_LABELS, f"{name} has no label {label}"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_annotations_use_only_grouping_labels(rule):
    # {{ $labels.X }} in an annotation is empty unless X survives the aggregation.
    expr = promql_parser.parse(rule["expr"])
    text = " ".join(rule.get("annotations", {}).values())
    used = set(re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text))
    grouping = set(re.findall(r"by\s*\(([^)]*)\)", str(expr)))
    kept = {l.strip() for g in grouping for l in g.split(",") if l.strip()}
    assert used <= kept, f"annotations use {used - kept}, not kept by the aggregation"


def test_measurement_mismatch_alert():
    by_name = {r["alert"]: r for r in rules()}
    rule = by_name["CocoAttestationMeasurementMismatch"]
    assert ("coco_attestation_failure_total", [("reason", promql_parser.MatchOp.Equal, "measurement_mismatch")]) in selectors(rule["expr"])
    assert "increase(" in rule["expr"]
    assert rule["labels"]["severity"] == "critical"


def test_resource_denials_alert():
    by_name = {r["alert"]: r for r in rules()}
    rule = by_name["CocoKbsResourceDenials"]
    assert [n for n, _ in selectors(rule["expr"])] == ["coco_kbs_resource_denials_total"]
    assert "increase(" in rule["expr"]


def test_parser_rejects_broken_promql():
    with pytest.raises(ValueError):
        promql_parser.parse('sum by (reason) (increase(coco_attestation_failure_total[10m]) > 0')
