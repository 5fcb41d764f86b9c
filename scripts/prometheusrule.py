"""Print the PrometheusRule of components/monitoring/prometheus-operator/ from the one
source of the alert rules, the plain Prometheus rules file beside it:

    python scripts/prometheusrule.py > components/monitoring/prometheus-operator/prometheusrule.yaml

tests/monitoring/test_rules.py fails while the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "components/monitoring/taxi-job.rules.yaml"

HEADER = """\
# GENERATED from ../taxi-job.rules.yaml by scripts/prometheusrule.py: edit that file and
# regenerate. The alert rules for prometheus-operator users; what they mean:
# docs/monitoring.md. Your Prometheus's ruleSelector may need a label here (e.g. the
# `release` label of kube-prometheus-stack): add it with a kustomize patch.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the expressions) as literal blocks, as in the rules file."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render(rules: Path = RULES) -> str:
    groups = yaml.safe_load(rules.read_text(encoding="utf-8"))["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "taxi-job", "namespace": "taxi-job"},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
