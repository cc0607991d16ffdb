"""deploy/: Prometheus configs and rules (promtool), metric names against live nodes, the
Kubernetes manifests, the compose stack, the Containerfile, the systemd units and Grafana.

Nothing here needs Docker, kubectl or systemd: files are parsed and cross-checked, and the
metric check starts real nodes in-process. promtool (Debian's `prometheus` package) is
required; without it the promtool tests fail with a message saying how to install it.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edgeproxy.cache import create_app as create_cache_app
from edgeproxy.config import Config, UpstreamConfig, load_config, parse_duration
from edgeproxy.errors import ConfigError
from edgeproxy.origin import create_app as create_origin_app
from edgeproxy.origin.auth import mint_token
from tests.origins import TestOrigin, pattern
from tests.servers import free_port, serve
from tests.test_origin import make_blob

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
K8S = DEPLOY / "kubernetes"
CONTAINER = DEPLOY / "container"
SYSTEMD = DEPLOY / "systemd"
GRAFANA = DEPLOY / "grafana"

ROLES = ("origin", "shield", "edge")
CONFIG_PATH = "/etc/edgeproxy/config.yaml"
DATA_DIR = "/var/lib/edgeproxy"

# Values of the cache metrics' `result` (the X-Cache verdicts) and `tier` labels.
CACHE_RESULTS = frozenset({"HIT", "MISS", "STALE", "REVALIDATED", "PASS", "ERROR"})
TIERS = frozenset({"edge", "shield"})
# Labels that exist without the node exporting them: added at scrape time by the Prometheus
# configs, and `le` of histogram buckets.
SCRAPE_LABELS = frozenset({"job", "instance", "role", "namespace", "pod", "le"})


# --- helpers -------------------------------------------------------------------------------


def find_promtool() -> str:
    """promtool's path; fails the calling test (never skips) when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH. Install Debian's `prometheus` package "
                    "(apt-get install -y prometheus; it provides /usr/bin/promtool).")
    return path


def promtool(*args: str, cwd: Path = PROM) -> str:
    result = subprocess.run([find_promtool(), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, \
        f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile / compose env_file), comments skipped."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


def setting(config: Config, env_name: str) -> Any:
    """The value of the setting an EDGEPROXY_SECTION__KEY variable overrides."""
    value: Any = config
    for key in env_name.removeprefix("EDGEPROXY_").lower().split("__"):
        value = value[key] if isinstance(value, Mapping) else getattr(value, key)
    return value


def check_secrets_env(config_file: Path, secret_names: list[str]) -> Config:
    """The config loads once every secret has a real value; each variable lands on the
    setting it names (load_config refuses a variable that names no setting, but a secret could
    still land on the wrong one); and the config alone does not load."""
    assert secret_names, "no secrets"
    assert all(name.startswith("EDGEPROXY_") for name in secret_names), secret_names
    fake = {name: f"{name.lower()}-{'0' * 40}" for name in secret_names}
    config = load_config(config_file, env=fake)
    for name, value in fake.items():
        assert setting(config, name) == value, f"{name} does not set a config key"
    with pytest.raises(ConfigError):
        load_config(config_file, env={})  # fail closed: no default keys in production
    return config


def role_port(config: Config, role: str) -> int:
    return config.origin.port if role == "origin" else config.node(role).port


def url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, f"{url}: expected http://host:port"
    return parts.hostname, parts.port


def serve_args(argv: list[str]) -> str:
    """The role of an `edgeproxy serve --role R --config /etc/edgeproxy/config.yaml` argv."""
    assert len(argv) == 5 and argv[0] == "serve" and argv[1] == "--role", argv
    assert argv[3:] == ["--config", CONFIG_PATH], argv
    assert argv[2] in ROLES, argv
    return argv[2]


# --- Prometheus: configs and rules ---------------------------------------------------------


def test_prometheus_config_and_rules_pass_promtool() -> None:
    # check config also loads and checks the rule files it names (alerts.yml).
    promtool("check", "config", "prometheus.yml")
    out = promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in out


def test_alert_unit_tests_pass() -> None:
    promtool("test", "rules", "alerts_test.yml", "alerts_weekly_test.yml")


def _alerts() -> list[dict[str, Any]]:
    groups = load_yaml(PROM / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    fired: set[str] = set()
    tested: set[str] = set()
    for name in ("alerts_test.yml", "alerts_weekly_test.yml"):
        for case in load_yaml(PROM / name)["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.add(check["alertname"])
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    alerts = {rule["alert"] for rule in _alerts()}
    assert alerts - fired == set(), "alerts without a unit test in which they fire"
    assert tested <= alerts, "unit tests of alerts that do not exist"
    # The two the seed's table insists on also have a case where they must stay quiet.
    quiet = {check["alertname"]
             for case in load_yaml(PROM / "alerts_test.yml")["tests"]
             for check in case.get("alert_rule_test", []) if check["exp_alerts"] == []}
    assert {"EdgeproxyCacheHitRateLow", "EdgeproxyIntegrityFailure"} <= quiet


def test_alerts_have_severity_and_text() -> None:
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"].get("summary"), rule["alert"]
        assert rule["annotations"].get("description"), rule["alert"]


def test_kubernetes_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes service discovery, so the SD block is
    swapped for a static target; everything else (relabelling, rule files) is checked."""
    config = load_yaml(PROM / "prometheus-kubernetes.yml")
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs", None), f"{job['job_name']}: no kubernetes SD"
        job["static_configs"] = [{"targets": ["pod.example:8080"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    promtool("check", "config", "prometheus.yml", cwd=tmp_path)

    # The relabelling reads exactly the annotations the pod templates carry.
    source = (PROM / "prometheus-kubernetes.yml").read_text()
    for doc in _k8s_objects():
        if doc["kind"] in WORKLOADS:
            for key in doc["spec"]["template"]["metadata"]["annotations"]:
                meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
                assert meta in source, f"prometheus-kubernetes.yml ignores {key}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL only inside rule files: wrap each query in a recording rule.
    rules = [{"record": f"dashboard:query_{i}:check", "expr": grafana_to_promql(expr)}
             for i, (_where, expr) in enumerate(dashboard_queries())]
    (tmp_path / "dashboard_rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)


# --- every metric the rules and the dashboard use is exported ------------------------------

# A metric name in PromQL; `tier:edgeproxy_hit_ratio:rate10m` (a recording rule) is not one.
SELECTOR = re.compile(r"(?<![\w:])(edgeproxy_[a-zA-Z0-9_]+)(?![\w:])\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def rule_queries() -> list[tuple[str, str]]:
    groups = load_yaml(PROM / "alerts.yml")["groups"]
    return [(f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name} {panel['title']!r}", target["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    return (expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
            .replace("$job", "edgeproxy-.+").replace("$instance", ".+"))


@dataclass
class Exposition:
    """What /metrics exported: sample name -> label name -> values seen, and which sample
    names had samples. Families without samples still list the sample names their type
    implies (`x_total`; `x_bucket`, `x_count`, `x_sum`), with no labels known."""

    labels: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    sampled: set[str] = field(default_factory=set)


def parse_exposition(text: str) -> Exposition:
    out = Exposition()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("", "_count", "_sum")}  # fmt: skip
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            out.labels.setdefault(family.name + suffix, {})
        for sample in family.samples:
            out.sampled.add(sample.name)
            labels = out.labels.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return out


def _two_parent_edge(config: Config, port: int) -> Any:
    """An edge with two upstreams (one server under two names), so that the director's
    per-upstream metrics are exported too."""
    parents = (UpstreamConfig(f"http://127.0.0.1:{port}"),
               UpstreamConfig(f"http://localhost:{port}"))
    edge = dataclasses.replace(config.edge, upstream="", upstreams=parents)
    return create_cache_app(config.replace(edge=edge), "edge")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exposition:
    """/metrics of a real edge and a real origin, after traffic that gives every cache
    metric a labelled sample: a miss, a hit, collapsed requests, an integrity failure."""
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path_factory.mktemp("d"))})
    upstream = TestOrigin()
    upstream.put("/v/t1/plain", pattern(3000))
    upstream.put("/v/t1/slow", pattern(3000))
    promised = hashlib.sha256(b"the promised bytes").hexdigest()
    upstream.put(f"/v/t1/{promised}", b"some other bytes")  # fails the node's SHA-256 check
    texts = []
    with serve(upstream) as up, \
            serve(_two_parent_edge(config, up.port)) as edge, \
            serve(create_origin_app(config)) as origin, \
            httpx.Client(timeout=10) as client:
        assert client.get(edge.url + "/v/t1/plain").status_code == 200  # MISS
        assert client.get(edge.url + "/v/t1/plain").status_code == 200  # HIT
        # The node cuts the connection short of a body that fails its hash.
        with contextlib.suppress(httpx.HTTPError):
            client.get(edge.url + f"/v/t1/{promised}")
        # Concurrent misses on a slow upstream: one fill, the others collapse onto it.
        upstream.delay_headers = 0.3
        threads = [threading.Thread(target=client.get, args=(edge.url + "/v/t1/slow",))
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        texts.append(client.get(edge.url + "/metrics").text)

        token = mint_token(config.auth.jwt_secret, "deploy-test")
        r = client.post(origin.url + "/v1/media/upload/request",
                        headers={"authorization": f"Bearer {token}"},
                        json={"file_size": 1000, "file_type": "image/jpeg",
                              "file_hash": "sha256:" + "ab" * 32})  # fmt: skip
        assert r.status_code == 200, r.text  # gives edgeproxy_origin_uploads_total a sample
        # A committed upload gives edgeproxy_origin_upload_duration_seconds its samples.
        blob = make_blob(8)
        ticket = client.post(origin.url + "/v1/media/upload/request",
                             headers={"authorization": f"Bearer {token}"},
                             json={"file_size": len(blob), "file_type": "image/jpeg",
                                   "file_hash": "sha256:" + hashlib.sha256(blob).hexdigest()}
                             ).json()  # fmt: skip
        upload_path = httpx.URL(ticket["upload_url"]).raw_path.decode()  # on origin.url's port
        assert client.put(origin.url + upload_path, content=blob).status_code == 200
        r = client.post(origin.url + "/v1/media/upload/confirm",
                        headers={"authorization": f"Bearer {token}"},
                        json={"media_id": ticket["media_id"],
                              "file_sha256": hashlib.sha256(blob).hexdigest()})  # fmt: skip
        assert r.status_code == 200, r.text
        texts.append(client.get(origin.url + "/metrics").text)
    return parse_exposition("\n".join(texts))


def test_metric_names_in_rules_and_dashboard_are_exported(exported: Exposition) -> None:
    queries = rule_queries() + dashboard_queries()
    referenced: set[str] = set()
    problems: list[str] = []
    for where, expr in queries:
        expr = grafana_to_promql(expr)
        known_labels = set(SCRAPE_LABELS)
        for match in SELECTOR.finditer(expr):
            name, selector = match.group(1), match.group(2) or ""
            referenced.add(name)
            if name not in exported.labels:
                continue  # reported below
            labels = exported.labels[name]
            if name not in exported.sampled:
                problems.append(f"{where}: {name} had no samples, so its labels went unchecked")
            known_labels |= set(labels)
            for label, _op, value in MATCHER.findall(selector):
                if label not in labels and label not in SCRAPE_LABELS:
                    problems.append(f"{where}: {name} has no label {label!r}")
                # Exact values and plain alternations: every one must be a real value.
                if name.startswith("edgeproxy_origin_") or not re.fullmatch(r"[\w|]+", value):
                    continue
                allowed = {"result": CACHE_RESULTS, "tier": TIERS}.get(label)
                if allowed is not None and not set(value.split("|")) <= allowed:
                    problems.append(f"{where}: {label}={value!r} is not one of {sorted(allowed)}")
        for group in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                if label not in known_labels:
                    problems.append(f"{where}: grouping label {label!r} is on none of its "
                                    "metrics")  # fmt: skip
    unknown = referenced - set(exported.labels)
    assert not unknown, f"metrics no node exports: {sorted(unknown)}"
    assert not problems, "\n".join(problems)
    # The check looked at something: the core cache and origin families are all in use.
    for name in ("edgeproxy_requests_total", "edgeproxy_request_duration_seconds_bucket",
                 "edgeproxy_integrity_failures_total", "edgeproxy_origin_uploads_total",
                 "edgeproxy_origin_upload_duration_seconds_bucket",
                 "edgeproxy_cache_size_limit_bytes"):
        assert name in referenced


def test_docs_name_only_exported_metrics(exported: Exposition) -> None:
    """The READMEs, docs/ and the rule file's comments describe what nodes export today."""
    families = set(exported.labels)
    families |= {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in families}
    texts = {path: path.read_text() for path in
             [ROOT / "README.md", DEPLOY / "README.md", *sorted((ROOT / "docs").glob("*.md")),
              PROM / "alerts.yml", PROM / "alerts_test.yml"]}  # fmt: skip
    for path, text in texts.items():
        for name in set(re.findall(r"(?<![\w:])edgeproxy_[a-z0-9_]*[a-z0-9](?![\w:])", text)):
            assert name in families, f"{path.name} names {name}, which no node exports"
        assert not re.search(r"\bproposed\b", text, re.I), f"{path.name} still says 'proposed'"


# --- YAML everywhere -----------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 15
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"


# --- Kubernetes ----------------------------------------------------------------------------

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass"}


def _kustomization() -> dict[str, Any]:
    kustomization: dict[str, Any] = load_yaml(K8S / "kustomization.yaml")
    return kustomization


def _k8s_objects(*, include_examples: bool = False) -> list[dict[str, Any]]:
    files = list(_kustomization()["resources"])
    if include_examples:
        files.append("secret.example.yaml")
    return [doc for name in files for doc in yaml.safe_load_all((K8S / name).read_text())
            if doc is not None]  # fmt: skip


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _k8s_objects(include_examples=True)
            if d["kind"] == kind}  # fmt: skip


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def _k8s_config(tmp_path: Path) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(_by_kind("ConfigMap")["edgeproxy-config"]["data"]["config.yaml"])
    secret = _by_kind("Secret")["edgeproxy-secrets"]
    return check_secrets_env(path, list(secret["stringData"]))


def test_kustomization_lists_every_manifest() -> None:
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The Secret example stays out on purpose: `kubectl apply -k` would overwrite the real
    # Secret with its placeholders.
    examples = {name for name in manifests if ".example." in name}
    assert examples == {"secret.example.yaml"}
    resources = _kustomization()["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == manifests - examples


def test_k8s_objects_are_well_formed() -> None:
    namespace = _kustomization()["namespace"]
    kinds = set()
    for doc in _k8s_objects(include_examples=True):
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc
        kinds.add(doc["kind"])
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
    assert {"Namespace", "ConfigMap", "Secret", "StatefulSet", "Deployment", "Service",
            "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    assert namespace in _by_kind("Namespace")


def test_k8s_workloads_probe_readyz_and_healthz_and_set_resources(tmp_path: Path) -> None:
    config = _k8s_config(tmp_path)
    roles = {}
    for doc in _k8s_objects():
        if doc["kind"] not in WORKLOADS:
            continue
        name, template = doc["metadata"]["name"], doc["spec"]["template"]
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        volumes |= {v["metadata"]["name"]: v for v in doc["spec"].get("volumeClaimTemplates", [])}
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True, name
        for container in _containers(doc):
            where = f"{name}/{container['name']}"
            ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
            assert "readinessProbe" in container and "livenessProbe" in container, where
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe not in container:
                    continue
                http = container[probe]["httpGet"]
                # readiness drops a draining pod (and an origin whose database fails)
                wanted = "/readyz" if probe == "readinessProbe" else "/healthz"
                assert http["path"] == wanted, f"{where} {probe}"
                assert http["port"] in ports or http["port"] in ports.values(), f"{where} {probe}"
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), f"{where} {kind}"
            # Runs one role, on the port config.yaml gives that role, scraped on that port.
            role = serve_args(container["args"])
            roles[role] = name
            port = role_port(config, role)
            assert port in ports.values(), f"{where}: config puts {role} on {port}"
            annotations = template["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true", where
            assert annotations["prometheus.io/port"] == str(port), where
            assert annotations["prometheus.io/path"] == "/metrics", where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert set(mounts.values()) <= set(volumes), f"{where}: mount of an undefined volume"
            assert volumes[mounts["/etc/edgeproxy"]]["configMap"]["name"] == "edgeproxy-config"
            assert DATA_DIR in mounts and str(config.data_dir) == DATA_DIR, where
            secret_refs = {e["secretRef"]["name"] for e in container["envFrom"]}
            assert secret_refs == {"edgeproxy-secrets"}, where
    assert set(roles) == set(ROLES)
    # The origin keeps SQLite and blobs on one RWO volume: exactly one replica.
    origin = _by_kind("StatefulSet")[roles["origin"]]
    assert origin["spec"]["replicas"] == 1
    assert _by_kind("Deployment").get(roles["edge"]), "edges are a Deployment"


def _selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def test_k8s_services_and_policies_point_at_real_pods(tmp_path: Path) -> None:
    config = _k8s_config(tmp_path)
    workloads = [d for d in _k8s_objects() if d["kind"] in WORKLOADS]
    services = _by_kind("Service")
    for name, service in services.items():
        selected = [w for w in workloads if _selects(service["spec"]["selector"], w)]
        assert selected, f"Service {name} selects no pods"
        for port in service["spec"]["ports"]:
            names = {p.get("name") for w in selected for c in _containers(w) for p in c["ports"]}
            assert port["targetPort"] in names, f"Service {name}: no port {port['targetPort']}"
    for statefulset in _by_kind("StatefulSet").values():
        governing = services[statefulset["spec"]["serviceName"]]
        assert governing["spec"].get("clusterIP") == "None", "governing Service not headless"
    # Upstreams in config.yaml are these Services, on the ports their targets listen on.
    for tier, target in (("shield", "origin"), ("edge", "shield")):
        host, port = url_host_port(config.node(tier).upstream)
        assert host in services, f"{tier}.upstream: no Service {host}"
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}
        assert port == role_port(config, target)
    edge = next(w for w in workloads if serve_args(_containers(w)[0]["args"]) == "edge")
    (pdb,) = _by_kind("PodDisruptionBudget").values()
    assert _selects(pdb["spec"]["selector"]["matchLabels"], edge)
    (hpa,) = _by_kind("HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (edge["kind"], edge["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # Only media paths go public: /metrics and /_admin share the nodes' ports.
    for ingress in _by_kind("Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services
                assert path["path"] in ("/v/", "/pp/", "/v1/"), path["path"]
    hosts = {rule["host"] for i in _by_kind("Ingress").values() for rule in i["spec"]["rules"]}
    assert urlsplit(config.public_base_url).hostname in hosts
    assert urlsplit(config.origin.public_url).hostname in hosts


def test_k8s_config_needs_the_secret_and_refuses_its_placeholders(tmp_path: Path) -> None:
    _k8s_config(tmp_path)  # loads with real-looking values, not without them
    secret = _by_kind("Secret")["edgeproxy-secrets"]["stringData"]
    with pytest.raises(ConfigError):  # the example applied unchanged must not run
        load_config(tmp_path / "config.yaml", env=secret)


# --- compose and the Containerfile ---------------------------------------------------------

NODE_SERVICES = ("origin", "shield", "edge-1", "edge-2")


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = load_yaml(CONTAINER / "compose.yaml")
    return compose


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the bind mounts (named volumes left out)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (CONTAINER / source).resolve()
    return out


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in service.get("env_file", []):
        env |= read_env_file(CONTAINER / _interpolate(entry))
    return env


def test_compose_services_and_files() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(NODE_SERVICES) | {"prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for target, source in _binds(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        for entry in service.get("env_file", []):
            assert (CONTAINER / _interpolate(entry)).is_file(), f"{name}: env_file {entry}"
        if "build" in service:
            context = (CONTAINER / service["build"]["context"]).resolve()
            assert (context / "pyproject.toml").is_file(), f"{name}: build context"
            assert (context / service["build"]["dockerfile"]).is_file(), f"{name}: dockerfile"
    for name in compose.get("volumes", {}):
        assert any(v.startswith(f"{name}:") for s in services.values()
                   for v in s.get("volumes", [])), f"volume {name} unused"  # fmt: skip


def test_compose_nodes_form_the_topology() -> None:
    services = _compose()["services"]
    roles = {}
    for name in NODE_SERVICES:
        service = services[name]
        roles[name] = serve_args(service["command"])
        assert _binds(service)[CONFIG_PATH] == (CONTAINER / "config.yaml").resolve(), name
        assert any(v.endswith(f":{DATA_DIR}") for v in service["volumes"]), name
    assert sorted(roles.values()) == ["edge", "edge", "origin", "shield"]
    env = _compose_env(services["origin"])
    assert all(_compose_env(services[name]) == env for name in NODE_SERVICES)
    config = check_secrets_env(CONTAINER / "config.yaml", list(env))
    load_config(CONTAINER / "config.yaml", env=env)  # the dev values themselves are valid
    for name, role in roles.items():
        # The image's HEALTHCHECK probes HEALTHCHECK_URL: the role's own port.
        host, port = url_host_port(services[name]["environment"]["HEALTHCHECK_URL"])
        assert (host, port) == ("127.0.0.1", role_port(config, role)), name
        assert urlsplit(services[name]["environment"]["HEALTHCHECK_URL"]).path == "/healthz"
    # edge -> shield -> origin by service name and the port that role listens on.
    by_role = {role: name for name, role in roles.items()}
    for tier, target in (("edge", "shield"), ("shield", "origin")):
        assert url_host_port(config.node(tier).upstream) == \
            (by_role[target], role_port(config, target)), f"{tier}.upstream"


def _healthcheck_code() -> str:
    """The Python the compose healthcheck runs; the same as the image's HEALTHCHECK."""
    services = _compose()["services"]
    checks = [services[name]["healthcheck"] for name in NODE_SERVICES]
    assert all(check == checks[0] for check in checks)
    argv = checks[0]["test"]
    assert argv[:3] == ["CMD", "python", "-c"] and len(argv) == 4, argv
    image = json.loads(dict(_containerfile())["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert image == argv[1:], "compose and Containerfile health checks differ"
    for key in ("interval", "timeout", "start_period"):
        assert parse_duration(checks[0][key].removesuffix("s")) > 0, key
    assert parse_duration(checks[0]["timeout"].removesuffix("s")) < \
        parse_duration(checks[0]["interval"].removesuffix("s"))
    code: str = argv[3]
    return code


def test_compose_health_checks_run_in_the_compose_file(tmp_path: Path) -> None:
    """Podman drops an image's HEALTHCHECK, so compose.yaml carries its own; run it for real
    against a live node and a closed port."""
    code = _healthcheck_code()
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path)})

    def check(url: str) -> int:
        env = {"PATH": "/usr/bin:/bin", "HEALTHCHECK_URL": url,
               "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              timeout=30, check=False).returncode  # fmt: skip

    with serve(create_origin_app(config)) as origin:
        assert check(origin.url + "/healthz") == 0  # and the proxy variables are ignored
        assert check(origin.url + "/nothing-here") != 0
    assert check(f"http://127.0.0.1:{free_port()}/healthz") != 0


def test_compose_prometheus_scrapes_every_node() -> None:
    compose = _compose()
    services = compose["services"]
    config = load_config(CONTAINER / "config.yaml", env=_compose_env(services["origin"]))
    scraped = {}
    for job in load_yaml(PROM / "prometheus.yml")["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.partition(":")
                if job["job_name"].startswith("edgeproxy-"):
                    role = job["job_name"].removeprefix("edgeproxy-")
                    assert serve_args(services[host]["command"]) == role, target
                    assert int(port) == role_port(config, role), target
                    scraped[host] = role
    assert set(scraped) == set(NODE_SERVICES)
    # rule_files are relative to prometheus.yml: alerts.yml is mounted next to it.
    binds = _binds(services["prometheus"])
    assert binds["/etc/prometheus/prometheus.yml"] == PROM / "prometheus.yml"
    assert binds["/etc/prometheus/alerts.yml"] == PROM / "alerts.yml"


def test_compose_grafana_is_provisioned() -> None:
    grafana = _compose()["services"]["grafana"]
    binds = _binds(grafana)
    assert binds["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    (source,) = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    assert url_host_port(source["url"]) == ("prometheus", 9090)
    (provider,) = load_yaml(GRAFANA / "provisioning/dashboards/edgeproxy.yml")["providers"]
    assert binds[provider["options"]["path"]] == GRAFANA / "dashboards"


def _containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", (CONTAINER / "Containerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def test_containerfile() -> None:
    steps = _containerfile()
    args = dict(a.partition("=")[::2] for i, a in steps if i == "ARG" and "=" in a)
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a).split()[0]
              for i, a in steps if i == "FROM"]  # fmt: skip
    assert images[-1] == "python:3.11-slim", images
    last = {instruction: a for instruction, a in steps}
    assert last["USER"].split(":")[0] not in ("root", "0"), "runs as root"
    assert json.loads(last["ENTRYPOINT"]) == ["edgeproxy"]
    assert DATA_DIR in json.loads(last["VOLUME"])
    assert any(i == "RUN" and re.search(r"pip install \.$", a) for i, a in steps)
    healthcheck = last["HEALTHCHECK"]
    assert "CMD" in healthcheck and "python" in healthcheck and "HEALTHCHECK_URL" in healthcheck
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for i, a in steps if i == "ENV")))
    assert urlsplit(env["HEALTHCHECK_URL"]).path == "/healthz"
    assert env["EDGEPROXY_DATA_DIR"] == DATA_DIR
    # COPY sources exist in the build context (the repository root) and are not ignored.
    ignore = (CONTAINER / "Containerfile.dockerignore").read_text()
    for instruction, a in steps:
        if instruction == "COPY" and not a.startswith("--from"):
            for source in a.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
                assert re.search(rf"^!{re.escape(source)}/?$", ignore, re.M), \
                    f"COPY {source}: excluded by Containerfile.dockerignore"


# --- systemd -------------------------------------------------------------------------------


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Section -> directive -> values (systemd directives may repeat)."""
    path = SYSTEMD / name
    # configparser (strict=False allows repeated keys) says whether it is INI at all.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(path.read_text())
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    assert set(sections) == set(parser.sections())
    return sections


def test_systemd_unit() -> None:
    unit = _unit("edgeproxy@.service")
    service = unit["Service"]

    def one(key: str) -> str:
        (value,) = service[key]
        return value

    argv = shlex.split(one("ExecStart"))
    assert argv[0].endswith("/edgeproxy")
    assert argv[1:] == ["serve", "--role", "%i", "--config", CONFIG_PATH]
    assert one("User") not in ("", "root", "0")
    assert one("Restart") == "on-failure"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("PrivateTmp") == "yes"
    assert DATA_DIR in " ".join(service["ReadWritePaths"]).split()
    assert f"/var/lib/{one('StateDirectory')}" == DATA_DIR
    assert int(one("LimitNOFILE")) >= 65536
    assert one("KillSignal") == "SIGTERM"
    # Longer than uvicorn's own drain after SIGTERM (5 s), so a stop is graceful.
    assert parse_duration(one("TimeoutStopSec")) > 5
    # Secrets are required: a missing file must stop the unit ("-" would make it optional).
    assert "/etc/edgeproxy/secrets.env" in service["EnvironmentFile"]
    assert unit["Install"]["WantedBy"] == ["edgeproxy.target"]
    assert _unit("edgeproxy.target")["Install"]["WantedBy"] == ["multi-user.target"]
    sysusers = (SYSTEMD / "edgeproxy.sysusers.conf").read_text()
    assert re.search(rf"^u\s+{re.escape(one('User'))}\s", sysusers, re.M)


def test_systemd_example_config() -> None:
    env = read_env_file(SYSTEMD / "secrets.env.example")
    config = check_secrets_env(SYSTEMD / "config.yaml", list(env))
    assert str(config.data_dir) == DATA_DIR
    assert config.public_base_url.startswith("https://")
    assert config.origin.base_url.startswith("https://")
    # One host: edge -> shield -> origin over loopback, on the ports the roles listen on.
    assert url_host_port(config.edge.upstream) == ("127.0.0.1", config.shield.port)
    assert url_host_port(config.shield.upstream) == ("127.0.0.1", config.origin.port)
    with pytest.raises(ConfigError):  # the example's placeholders must not run
        load_config(SYSTEMD / "config.yaml", env=env)


# --- Grafana -------------------------------------------------------------------------------


def _dashboards() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        yield path, json.loads(path.read_text())


def test_grafana_dashboard_panels_all_have_queries() -> None:
    dashboards = list(_dashboards())
    assert dashboards
    for path, dashboard in dashboards:
        assert dashboard["uid"] and dashboard["title"]
        # Import into any Grafana: the data source is a variable, never a provisioned uid.
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("job", "instance"):
            assert variables[name]["type"] == "query", name
            assert variables[name]["datasource"]["uid"] == "${datasource}", name
            assert variables[name]["multi"] and variables[name]["includeAll"], name
        assert "$job" in variables["instance"]["query"]["query"]  # instances of chosen jobs
        assert '"uid": "prometheus"' not in path.read_text()
        panels = dashboard["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        queried = [p for p in panels if p["type"] != "row"]
        assert len(queried) >= 10
        for panel in queried:
            where = f"{path.name} {panel['title']!r}"
            assert panel["targets"], f"{where}: no query"
            assert panel["datasource"]["uid"] == "${datasource}", where
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), where
            for target in panel["targets"]:
                assert target["expr"].strip(), f"{where}: empty query"
                assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}"
                # Every series selector follows the job and instance pickers.
                for match in re.finditer(r"(?<![\w:])(edgeproxy_\w+|up)(\{[^}]*\})?(?![\w(])",
                                         target["expr"]):  # fmt: skip
                    selector = match.group(2) or ""
                    assert 'job=~"$job"' in selector, f"{where}: {match.group(0)}"
                    assert 'instance=~"$instance"' in selector, f"{where}: {match.group(0)}"
    # The panels the deployment brief asks for, by the metric each one needs.
    queries = " ".join(expr for _where, expr in dashboard_queries())
    for needed in ('result="HIT"', "content_class", "edgeproxy_response_bytes_total",
                   "histogram_quantile(0.5", "histogram_quantile(0.99",
                   "edgeproxy_upstream_requests_total", "edgeproxy_collapsed_requests_total",
                   "edgeproxy_integrity_failures_total", "edgeproxy_cache_size_bytes",
                   "edgeproxy_origin_upload_duration_seconds_bucket"):
        assert needed in queries, needed
