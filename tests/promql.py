"""The PromQL of deploy/observability, read for checks: the dashboard's queries with Grafana's
template variables filled in, and the metric names and label names an expression reads.

Names come from a small PromQL lexer, not from regular expressions over the text: strings,
comments, durations and range brackets are skipped as tokens, function and aggregation calls
are told from metric names by the `(` (or `by`/`without`) that follows, and the label lists of
`by`, `without`, `on`, `ignoring`, `group_left` and `group_right` are read as labels. Whether an
expression is valid PromQL at all is promtool's to say (tests/integration/test_observability.py
runs every one through `promtool check rules`); this module assumes it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OBSERVABILITY = REPO / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yml"

# What Grafana puts in place of its variables when it sends a query; any valid stand-in does
# for a syntax check. `$cache` is a regex matcher's value (`cache=~"$cache"`).
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "cache": ".*",
    "datasource": "prometheus",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left"}
_KEYWORDS |= {"group_right", "offset", "bool", "atan2"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"}
_AGGREGATIONS |= {"count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_NUMBER_WORDS = {"inf", "nan"}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:[a-z]+(?:\d+[a-z]+)*)?)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>{}(),@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # string, number, name, op (spaces, comments and range brackets are dropped)
    text: str


@dataclass
class Selector:
    """A metric read by an expression, with the label names its matchers name."""

    metric: str
    labels: set[str] = field(default_factory=set)


@dataclass
class Reads:
    """What an expression reads: its selectors, and the labels it groups or matches by."""

    selectors: list[Selector]
    grouping_labels: set[str]

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors}


def tokens(expr: str) -> list[Token]:
    """`expr` as PromQL tokens. Raises ValueError at a character no token starts with."""
    out: list[Token] = []
    at = 0
    while at < len(expr):
        match = _TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[at : at + 20]!r} in {expr!r}")
        at = match.end()
        kind = match.lastgroup or ""
        if kind not in ("space", "comment", "range"):
            out.append(Token(kind, match.group()))
    return out


def _label_list(toks: list[Token], at: int) -> tuple[set[str], int]:
    """The label names of a `(a, b)` list starting at toks[at] (the `(`), and the index after
    its `)`."""
    labels: set[str] = set()
    at += 1
    while at < len(toks) and toks[at].text != ")":
        if toks[at].kind == "name":
            labels.add(toks[at].text)
        at += 1
    return labels, at + 1


def _matchers(toks: list[Token], at: int) -> tuple[set[str], str | None, int]:
    """The label names of a `{name op "value", ...}` block starting at toks[at] (the `{`), the
    metric it names with `__name__="..."` if any, and the index after its `}`."""
    labels: set[str] = set()
    metric = None
    at += 1
    while at < len(toks) and toks[at].text != "}":
        tok = toks[at]
        if tok.kind == "name" and at + 2 < len(toks) and toks[at + 1].kind == "op":
            value = toks[at + 2]
            if tok.text == "__name__" and toks[at + 1].text == "=" and value.kind == "string":
                metric = json.loads(value.text) if value.text[0] == '"' else value.text[1:-1]
            else:
                labels.add(tok.text)
            at += 3
            continue
        at += 1
    return labels, metric, at + 1


def reads(expr: str) -> Reads:
    """The metrics, matcher labels and grouping labels that `expr` names."""
    toks = tokens(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    at = 0
    while at < len(toks):
        tok = toks[at]
        after = toks[at + 1].text if at + 1 < len(toks) else ""
        if tok.text == "{":  # a selector with no name in front: {__name__="..."}
            labels, metric, at = _matchers(toks, at)
            if metric is not None:
                selectors.append(Selector(metric, labels))
            continue
        if tok.kind != "name":
            at += 1
            continue
        word = tok.text.lower()
        if word in _LABEL_LISTS and after == "(":
            labels, at = _label_list(toks, at + 1)
            grouping |= labels
            continue
        if word in _KEYWORDS or word in _NUMBER_WORDS or after == "(":
            at += 1  # a keyword, Inf/NaN, or a function or aggregation called
            continue
        if tok.text in _AGGREGATIONS and after.lower() in ("by", "without"):
            at += 1  # sum by (x) (...)
            continue
        selector = Selector(tok.text)
        at += 1
        if after == "{":
            selector.labels, _, at = _matchers(toks, at)
        selectors.append(selector)
    return Reads(selectors, grouping)


def fill_variables(text: str, values: Mapping[str, str] | None = None) -> str:
    """`text` with Grafana's variables ($x, ${x}, ${x:fmt}, [[x]]) replaced by `values`, else
    by GRAFANA_VARIABLES' stand-ins. Raises KeyError for a variable that has neither."""
    filled = {**GRAFANA_VARIABLES, **(values or {})}

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return filled[name]

    return _VARIABLE.sub(one, text)


@dataclass(frozen=True)
class PanelQuery:
    panel: str  # the panel's title
    row: str  # the title of the row above it
    ref_id: str
    expr: str  # as written in the dashboard, variables and all
    legend: str

    @property
    def promql(self) -> str:
        return fill_variables(self.expr)


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Every query of every panel, in the dashboard's order, with the row each is under."""
    out: list[PanelQuery] = []
    row = ""
    for panel in _panels(dashboard["panels"]):
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel.get("targets", []):
            out.append(
                PanelQuery(
                    panel["title"],
                    row,
                    target["refId"],
                    target["expr"],
                    target.get("legendFormat", ""),
                )
            )
    return out


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),\s*)?(\w+)\)\s*$", re.S)


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variable, PromQL selector, label) of each `label_values(selector, label)` variable."""
    out = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        if match is None or not match.group(1):
            raise ValueError(f"variable {variable['name']}: not label_values(metric, label)")
        out.append((variable["name"], match.group(1), match.group(2)))
    return out
