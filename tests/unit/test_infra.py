"""The deployment files in infra/ checked against the code they deploy: setting names, commands,
metric names, probes, image pins. Offline: the files are parsed, nothing is started."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from streams.cli.main import app
from streams.config import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
COMPOSE_FILE = INFRA / "compose" / "docker-compose.yml"
K8S = INFRA / "k8s"
PROMETHEUS_FILE = INFRA / "prometheus" / "prometheus.yml"
DASHBOARD_FILE = INFRA / "grafana" / "billing-dashboard.json"
ALERTS_FILE = INFRA / "prometheus" / "alerts.yml"
PROMETHEUS_RULE_FILE = K8S / "prometheus-rules.yaml"

APP_IMAGE = "ai-billing-streams"
ALLOWED_IMAGES = {
    "apache/kafka",
    "clickhouse/clickhouse-server",
    "prom/prometheus",
    "grafana/grafana",
    "danielqsj/kafka-exporter",
    APP_IMAGE,
}
SECRET_SETTINGS = {name for name, (_, doc) in SETTINGS.items() if "secret" in doc.lower()}
PIPELINE_COMMANDS = {"worker", "sink", "topics", "migrate"}

# The metrics streams/observability/metrics.py exports, with their labels. The dashboard may use
# nothing else: a misspelt name or label gives an empty panel, not an error.
DOCUMENTED_METRICS: dict[str, set[str]] = {
    "billing_events_consumed_total": set(),
    "billing_events_rated_total": set(),
    "billing_events_applied_total": set(),
    "billing_events_rejected_total": {"reason"},
    "billing_events_duplicate_total": set(),
    "billing_deductions_total": {"profile", "currency"},
    "billing_rated_amount_total": {"profile", "currency"},
    "billing_bucket_amount_total": {"profile", "currency", "bucket"},
    "billing_alerts_total": {"kind"},
    "billing_settlement_lines_total": {"granularity", "line_type"},
    "billing_hour_close_delay_seconds": set(),
    "billing_consumer_lag": {"group", "topic", "partition"},
    "billing_event_age_seconds": {"group", "topic", "partition"},
    "billing_worker_round_seconds": set(),
    "billing_sink_batch_rows": set(),
    "billing_sink_insert_seconds": {"table"},
    "billing_sink_insert_failures_total": {"table"},
    "billing_sink_rows_total": {"table"},
    "billing_sink_halted_total": {"table", "reason"},
}
HISTOGRAMS = {
    "billing_hour_close_delay_seconds",
    "billing_worker_round_seconds",
    "billing_sink_batch_rows",
    "billing_sink_insert_seconds",
}
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series
PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "rate",
    "irate",
    "increase",
    "delta",
    "histogram_quantile",
    "vector",
    "scalar",
    "abs",
    "clamp_min",
    "clamp_max",
    "or",
    "and",
    "unless",
    "bool",
    "offset",
    "changes",
    "absent",
}
# Metrics the alert rules may use besides ours, with their labels: the process metrics
# prometheus-client exports (ProcessCollector, Linux), Prometheus' own `up`, kafka-exporter
# (danielqsj/kafka-exporter) and kube-state-metrics v2.
PROCESS_METRICS: dict[str, set[str]] = {
    "process_start_time_seconds": set(),
    "process_resident_memory_bytes": set(),
    "process_cpu_seconds_total": set(),
    "process_open_fds": set(),
}
EXTERNAL_METRICS: dict[str, set[str]] = {
    "up": set(),
    "kafka_consumergroup_lag": {"consumergroup", "topic", "partition"},
    "kafka_consumergroup_current_offset": {"consumergroup", "topic", "partition"},
    "kafka_topic_partition_under_replicated_partition": {"topic", "partition"},
    "kube_pod_container_status_restarts_total": {"namespace", "pod", "uid", "container"},
    "kube_pod_container_status_last_terminated_exitcode": {"namespace", "pod", "uid", "container"},
    "kube_pod_container_status_waiting_reason": {"namespace", "pod", "uid", "container", "reason"},
    "kube_statefulset_replicas": {"namespace", "statefulset"},
    "kube_statefulset_status_replicas_ready": {"namespace", "statefulset"},
    "kube_deployment_status_replicas_unavailable": {"namespace", "deployment"},
}


# ---------------------------------------------------------------- loading


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def k8s_docs() -> list[dict]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def k8s_objects(kind: str) -> list[dict]:
    return [doc for doc in k8s_docs() if doc.get("kind") == kind]


def workload(name: str) -> dict:
    """The Deployment or StatefulSet called ``name``."""
    found = [
        doc
        for doc in k8s_objects("Deployment") + k8s_objects("StatefulSet")
        if doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, (
        f"expected one Deployment or StatefulSet {name} in infra/k8s, found {len(found)}"
    )
    return found[0]


def k8s_object(kind: str, name: str) -> dict:
    found = [doc for doc in k8s_objects(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in infra/k8s, found {len(found)}"
    return found[0]


def pod_specs() -> list[tuple[str, dict]]:
    return [
        (doc["metadata"]["name"], doc["spec"]["template"]["spec"])
        for doc in k8s_docs()
        if doc.get("kind") in ("Deployment", "StatefulSet", "Job")
    ]


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def split_image(ref: str) -> tuple[str, str]:
    """(repository without registry host, tag); tag is '' when the reference has none."""
    ref = ref.split("@", 1)[0]
    name, tag = ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, "")
    host, _, rest = name.partition("/")
    if rest and ("." in host or ":" in host or host == "localhost"):
        name = rest
    return name, tag


def is_app(image: str) -> bool:
    return split_image(image)[0] == APP_IMAGE


def app_services() -> dict[str, dict]:
    services = {
        name: svc for name, svc in compose()["services"].items() if is_app(svc.get("image", ""))
    }
    assert {"init", "worker", "sink"} <= set(services), "compose lacks an app service"
    return services


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def configmap() -> dict[str, str]:
    return {k: str(v) for k, v in k8s_object("ConfigMap", "billing-config")["data"].items()}


def secret() -> dict[str, str]:
    obj = k8s_object("Secret", "billing-secrets")
    return {**obj.get("data", {}), **obj.get("stringData", {})}


def effective_env(container: dict) -> dict[str, str]:
    """What the process sees: SETTINGS defaults, the image's ENV, the ConfigMap, the container's
    env."""
    env = {name: default for name, (default, _) in SETTINGS.items()} | docker_env()
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmap())
    env.update({e["name"]: str(e.get("value", "")) for e in container.get("env", [])})
    return env


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
    ]


def docker_env() -> dict[str, str]:
    return {
        k: v
        for op, arg in dockerfile_instructions()
        if op == "ENV"
        for k, v in re.findall(r"(\w+)=(\S*)", arg)
    }


def docker_entrypoint() -> list[str]:
    entrypoints = [json.loads(arg) for op, arg in dockerfile_instructions() if op == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    return entrypoints[-1]


def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_targets() -> list[tuple[str, dict]]:
    def walk(panels):
        for panel in panels:
            yield from ((panel["title"], t) for t in panel.get("targets", []))
            yield from walk(panel.get("panels", []))

    return list(walk(dashboard()["panels"]))


# ---------------------------------------------------------------- every file


INFRA_FILES = sorted(p for ext in ("*.yml", "*.yaml", "*.json") for p in INFRA.rglob(ext))


def test_the_deployment_files_exist():
    expected = {
        DOCKERFILE,
        COMPOSE_FILE,
        PROMETHEUS_FILE,
        DASHBOARD_FILE,
        INFRA / "grafana" / "provisioning" / "dashboards.yaml",
        INFRA / "grafana" / "provisioning" / "datasource.yaml",
        *(
            K8S / f
            for f in (
                "namespace.yaml",
                "configmap.yaml",
                "secret.yaml",
                "worker-statefulset.yaml",
                "sink-deployment.yaml",
                "init-job.yaml",
                "service-metrics.yaml",
            )
        ),
    }
    assert not [str(p.relative_to(ROOT)) for p in expected if not p.is_file()]


@pytest.mark.parametrize("path", INFRA_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_and_json_file_parses(path):
    if path.suffix == ".json":
        json.loads(path.read_text())
    else:
        assert [doc for doc in yaml.safe_load_all(path.read_text()) if doc], f"{path} is empty"


def test_images_are_pinned_and_known():
    images = [svc["image"] for svc in compose()["services"].values()]
    images += [c["image"] for _, pod in pod_specs() for c in containers(pod)]
    assert len(images) >= 8
    for ref in images:
        repo, tag = split_image(ref)
        assert repo in ALLOWED_IMAGES, (
            f"{ref}: not one of the known images {sorted(ALLOWED_IMAGES)}"
        )
        if repo != APP_IMAGE:
            assert tag and tag != "latest", f"{ref}: pin a version, a moving tag changes what runs"


def test_kubernetes_never_runs_a_latest_app_image():
    # With imagePullPolicy IfNotPresent each node keeps whichever :latest it pulled first.
    for name, pod in pod_specs():
        for c in containers(pod):
            tag = split_image(c["image"])[1]
            assert tag and tag != "latest", f"{name}/{c['name']}: {c['image']}"


# ---------------------------------------------------------------- settings


def test_every_variable_given_to_the_app_is_a_setting():
    given: dict[str, set[str]] = {}
    for name, svc in app_services().items():
        for var in compose_env(svc):
            given.setdefault(var, set()).add(f"compose {name}")
    for var in configmap():
        given.setdefault(var, set()).add("configmap")
    for var in secret():
        given.setdefault(var, set()).add("secret")
    for name, pod in pod_specs():
        for c in containers(pod):
            for e in c.get("env", []):
                given.setdefault(e["name"], set()).add(f"k8s {name}/{c['name']}")
    prefixes = tuple({name.split("_", 1)[0] + "_" for name in SETTINGS})
    for var in docker_env():
        if var.startswith(prefixes):
            given.setdefault(var, set()).add("Dockerfile")
    unknown = {var: sorted(where) for var, where in given.items() if var not in SETTINGS}
    assert not unknown, (
        f"not in streams.config.SETTINGS (misspelt, or the code lacks it): {unknown}"
    )
    assert {"KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL", "METRICS_HOST"} <= set(given)


def test_secret_holds_exactly_the_secret_settings():
    assert SECRET_SETTINGS == {"KAFKA_SASL_PASSWORD", "CLICKHOUSE_PASSWORD"}
    assert set(secret()) == SECRET_SETTINGS


def test_configmap_holds_no_secret():
    cm = configmap()
    assert not [k for k in cm if "PASSWORD" in k or k in SECRET_SETTINGS]
    secret_values = [v for v in secret().values() if v]
    assert not [k for k, v in cm.items() if any(s in v for s in secret_values)]
    assert urlsplit(cm["CLICKHOUSE_URL"]).password is None, (
        "the ClickHouse password belongs in the Secret"
    )


def test_compose_takes_every_password_from_the_environment():
    for name, svc in compose()["services"].items():
        for var, value in compose_env(svc).items():
            if "PASSWORD" in var:
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), (
                    f"{name}: {var} must be ${{VAR:?...}}, not a literal"
                )


def test_kubernetes_talks_tls_and_takes_credentials_from_the_secret():
    cm = configmap()
    assert cm["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert (
        cm["KAFKA_SASL_MECHANISM"] in ("SCRAM-SHA-256", "SCRAM-SHA-512")
        and cm["KAFKA_SASL_USERNAME"]
    )
    url = urlsplit(cm["CLICKHOUSE_URL"])
    assert url.scheme == "https" and url.username
    for name, pod in pod_specs():
        for c in containers(pod):
            refs = {(kind, src[kind]["name"]) for src in c.get("envFrom", []) for kind in src}
            assert refs == {("configMapRef", "billing-config"), ("secretRef", "billing-secrets")}, (
                f"{name}/{c['name']}"
            )


# ---------------------------------------------------------------- commands


def rating_subcommands(argv: list[str]) -> list[str]:
    """The `rating` subcommands an argv runs: `rating X ...` directly, or inside a shell script."""
    if argv and argv[0] == "rating":
        return argv[1:2]
    return re.findall(r"\brating\s+([\w-]+)", " ".join(argv))


def as_argv(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value or [])


def test_commands_run_are_rating_subcommands():
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    used: dict[str, str] = {}
    for name, svc in app_services().items():
        entrypoint = as_argv(svc["entrypoint"]) if "entrypoint" in svc else docker_entrypoint()
        for sub in rating_subcommands(entrypoint + as_argv(svc.get("command"))):
            used[sub] = f"compose {name}"
    for name, pod in pod_specs():
        for c in containers(pod):
            if not is_app(c["image"]):
                continue
            argv = (
                c["command"] + c.get("args", [])
                if "command" in c
                else docker_entrypoint() + c.get("args", [])
            )
            for sub in rating_subcommands(argv):
                used[sub] = f"k8s {name}/{c['name']}"
    assert not {sub: where for sub, where in used.items() if sub not in registered}, (
        f"`rating` has {sorted(registered)}"
    )
    assert PIPELINE_COMMANDS <= set(used), "a pipeline process is missing from the deployment"


# ---------------------------------------------------------------- kubernetes


@pytest.mark.parametrize("name,command", [("billing-worker", "worker"), ("billing-sink", "sink")])
def test_long_running_pods_have_probes_resources_and_reachable_metrics(name, command):
    pod = workload(name)["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c.get("args", [])[:1] == [command]]
    env = effective_env(c)
    assert env["METRICS_HOST"] == "0.0.0.0", (
        "on loopback the kubelet's probes and Prometheus cannot reach it"
    )
    port = int(env["METRICS_PORT"])
    named = {p["name"]: p["containerPort"] for p in c["ports"] if "name" in p}
    assert port in {p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert named.get(get["port"], get["port"]) == port, f"{probe} is not on the metrics port"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    assert pod.get("terminationGracePeriodSeconds", 30) >= 30


def test_worker_replicas_do_not_exceed_partitions():
    replicas = workload("billing-worker")["spec"]["replicas"]
    assert 1 <= replicas <= int(configmap()["KAFKA_PARTITIONS"])
    env = {**{k: d for k, (d, _) in SETTINGS.items()}, **compose_env(app_services()["worker"])}
    assert 1 <= app_services()["worker"]["deploy"]["replicas"] <= int(env["KAFKA_PARTITIONS"])


def test_worker_state_directory_is_a_writable_volume():
    sts = k8s_object("StatefulSet", "billing-worker")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    data_dir = Path(effective_env(c)["WORKER_DATA_DIR"])
    assert data_dir.is_absolute()
    mounts = {m["name"]: Path(m["mountPath"]) for m in c.get("volumeMounts", [])}
    state = [name for name, m in mounts.items() if data_dir == m or m in data_dir.parents]
    assert state, f"{data_dir} is on the read-only root"
    # a volume per pod that survives restarts and rescheduling: a claim template, not an emptyDir
    claims = {t["metadata"]["name"]: t for t in sts["spec"].get("volumeClaimTemplates", [])}
    assert state[0] in claims and state[0] not in {v["name"] for v in pod.get("volumes", [])}, state
    assert claims[state[0]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claims[state[0]]["spec"]["resources"]["requests"]["storage"]
    worker = app_services()["worker"]
    data_dir = Path(compose_env(worker)["WORKER_DATA_DIR"])
    targets = [Path(v.split(":")[1] if ":" in v else v) for v in worker.get("volumes", [])]
    assert any(data_dir == t or t in data_dir.parents for t in targets), (
        "compose worker: WORKER_DATA_DIR not on a volume"
    )


def test_pods_meet_the_restricted_pod_security_standard():
    assert (
        k8s_object("Namespace", "billing")["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ]
        == "restricted"
    )
    specs = pod_specs()
    assert len(specs) >= 3
    for name, pod in specs:
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True and pod_ctx.get("runAsUser", 1) != 0, name
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in containers(pod):
            ctx = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), where


def test_metrics_service_selects_worker_and_sink_but_not_the_init_job():
    svc = k8s_object("Service", "billing-metrics")
    assert svc["spec"].get("clusterIP") == "None"
    selector = svc["spec"]["selector"].items()

    def selected(kind, name):
        return selector <= k8s_object(kind, name)["spec"]["template"]["metadata"]["labels"].items()

    assert selected("StatefulSet", "billing-worker") and selected("Deployment", "billing-sink")
    assert not selected("Job", "billing-init")
    assert {p["port"] for p in svc["spec"]["ports"]} == {
        int(svc["metadata"]["annotations"]["prometheus.io/port"])
    }


def test_deployment_selectors_match_their_pods():
    workloads = k8s_objects("Deployment") + k8s_objects("StatefulSet")
    for doc in workloads + k8s_objects("PodDisruptionBudget"):
        labels = doc["spec"]["selector"]["matchLabels"].items()
        targets = [
            d for d in workloads if labels <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert targets, f"{doc['kind']} {doc['metadata']['name']} selects no pods"
    for doc in k8s_objects("StatefulSet"):
        assert (
            doc["spec"]["selector"]["matchLabels"].items()
            <= doc["spec"]["template"]["metadata"]["labels"].items()
        )


def test_worker_statefulset_has_its_headless_service():
    sts = k8s_object("StatefulSet", "billing-worker")
    svc = k8s_object("Service", sts["spec"]["serviceName"])
    assert svc["spec"].get("clusterIP") == "None"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_production_durability_and_group_settings():
    from streams.config import Settings
    from streams.worker.tuning import rocksdb_memory_bound_bytes, table_options

    cm = configmap()
    s = Settings.from_env(
        {k: v for k, v in cm.items()} | {"KAFKA_SASL_PASSWORD": "x", "CLICKHOUSE_PASSWORD": "x"}
    )
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2)
    assert s.worker_standby_replicas == 1
    local = Settings.from_env({})
    assert (local.kafka_min_insync_replicas, local.worker_standby_replicas) == (1, 0)
    # production group timeouts are their own, longer than the local ones
    assert s.worker_session_timeout_ms > local.worker_session_timeout_ms
    assert s.worker_heartbeat_interval_ms * 3 <= s.worker_session_timeout_ms
    assert s.worker_rebalance_timeout_ms >= s.worker_session_timeout_ms
    # RocksDB: the block caches and write buffers of every partition a worker holds (owned and
    # standby) fit in half of the container's memory limit, with the ledger's own memory beside them
    assert s.worker_store.startswith("rocksdb") and table_options(s)
    sts = k8s_object("StatefulSet", "billing-worker")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    limit = c["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    replicas = sts["spec"]["replicas"]
    held = -(-s.kafka_partitions // replicas) * (1 + s.worker_standby_replicas)
    assert rocksdb_memory_bound_bytes(s, held) <= int(limit[:-2]) * 1024**3 / 2


# ---------------------------------------------------------------- compose


def test_compose_wiring():
    services = compose()["services"]
    env = compose_env(app_services()["worker"])
    kafka_env = compose_env(services["kafka"])
    advertised = {
        urlsplit(url).netloc for url in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    assert set(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")) <= advertised
    url, ch_env = urlsplit(env["CLICKHOUSE_URL"]), compose_env(services["clickhouse"])
    assert (url.hostname, url.username, url.path.strip("/")) == (
        "clickhouse",
        ch_env["CLICKHOUSE_USER"],
        ch_env["CLICKHOUSE_DB"],
    )
    assert env["CLICKHOUSE_PASSWORD"] == ch_env["CLICKHOUSE_PASSWORD"]
    assert env["METRICS_HOST"] == "0.0.0.0"
    assert services["init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["init"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    for name in ("worker", "sink"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert "ports" not in services["worker"], "replicas would collide on the host port"


def test_compose_bind_mounts_exist():
    mounts = [
        v.split(":")[0]
        for svc in compose()["services"].values()
        for v in svc.get("volumes", [])
        if v.startswith(".")
    ]
    assert len(mounts) >= 4
    assert not [m for m in mounts if not (COMPOSE_FILE.parent / m).exists()]


# ---------------------------------------------------------------- prometheus


def test_prometheus_scrapes_worker_and_sink_on_the_metrics_port():
    jobs = {
        job["job_name"]: job
        for job in yaml.safe_load(PROMETHEUS_FILE.read_text())["scrape_configs"]
    }
    services = app_services()
    for name in ("worker", "sink"):
        port = int(compose_env(services[name]).get("METRICS_PORT", SETTINGS["METRICS_PORT"][0]))
        assert port == 9464
        targets = [
            (host, int(p))
            for sc in jobs[name].get("static_configs", [])
            for host, p in (t.rsplit(":", 1) for t in sc["targets"])
        ]
        targets += [
            (host, sd["port"])
            for sd in jobs[name].get("dns_sd_configs", [])
            for host in sd["names"]
        ]
        assert targets and all(t == (name, port) for t in targets), f"{name}: {targets}"


# ---------------------------------------------------------------- dockerfile


def test_dockerfile_base_is_pinned_and_the_app_runs_as_non_root():
    ops = dockerfile_instructions()
    bases = [arg.split()[0] for op, arg in ops if op == "FROM"]
    assert bases
    for base in bases:
        repo, tag = split_image(base)
        assert repo == "python" and tag.startswith("3.12") and tag != "latest", base
    last_from = max(i for i, (op, _) in enumerate(ops) if op == "FROM")
    users = [arg.strip() for op, arg in ops[last_from:] if op == "USER"]
    assert users, "the image runs as root"
    uid = users[-1].split(":")[0]
    # Kubernetes can only check runAsNonRoot against a numeric user.
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert docker_entrypoint() == ["rating"]


def test_dockerfile_copies_what_the_code_reads_beside_the_package():
    from streams.ingest.codec import SCHEMAS_DIR
    from streams.sink.clickhouse import MIGRATIONS_DIR
    from streams.sink.queries import FINANCE_SQL

    sources = [
        Path(part.rstrip("/"))
        for op, arg in dockerfile_instructions()
        if op == "COPY" and "--from" not in arg
        for part in arg.split()[:-1]
    ]
    assert not [str(s) for s in sources if not (ROOT / s).exists()], (
        "COPY of a path that does not exist"
    )
    for needed in (
        SCHEMAS_DIR,
        MIGRATIONS_DIR,
        FINANCE_SQL,
        ROOT / "streams",
        ROOT / "pyproject.toml",
    ):
        rel = needed.relative_to(ROOT)
        assert any(rel == s or s in rel.parents for s in sources), f"the image lacks {rel}"


# ---------------------------------------------------------------- grafana


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(identifiers other than PromQL words, label names) of one expression."""
    body = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = {
        m
        for block in re.findall(r"\{([^}]*)\}", body)
        for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", block)
    }
    body = re.sub(r"\{[^}]*\}", " ", body)
    for block in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", body):
        labels |= {label.strip() for label in block.split(",") if label.strip()}
    body = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", body)
    body = re.sub(r"\[[^\]]*\]|\$\{?\w+\}?", " ", body)
    return set(re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", body)) - PROMQL_WORDS, labels


def documented(series: str) -> str | None:
    if series in DOCUMENTED_METRICS:
        return series
    base, _, suffix = series.rpartition("_")
    return base if suffix in ("bucket", "sum", "count") and base in HISTOGRAMS else None


def test_promql_names_sees_metrics_and_labels():
    names, labels = promql_names(
        "histogram_quantile(0.99, sum by (le, table) "
        '(rate(billing_sink_insert_seconds_bucket{table=~"$t"}[5m]))) or vector(0)'
    )
    assert names == {"billing_sink_insert_seconds_bucket"} and labels == {"le", "table"}
    assert documented("billing_sink_insert_seconds_bucket") == "billing_sink_insert_seconds"
    assert documented("billing_events_consumed_total_bucket") is None  # a counter has no buckets


def test_dashboard_identity():
    d = dashboard()
    assert (d["uid"], d["schemaVersion"]) == ("billing-pipeline", 39)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert "datasource" in {v["name"] for v in d["templating"]["list"] if v["type"] == "datasource"}
    assert len(dashboard_targets()) >= 15

    def datasources(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]
            for value in node.values():
                yield from datasources(value)
        elif isinstance(node, list):
            for value in node:
                yield from datasources(value)

    # one variable, so the dashboard works against whatever Prometheus it is imported into
    prometheus = [ds for ds in datasources(d) if ds.get("type") == "prometheus"]
    assert len(prometheus) >= 15 and {ds["uid"] for ds in prometheus} == {"${datasource}"}


def test_dashboard_uses_only_documented_metrics_and_labels():
    used = set()
    for title, target in dashboard_targets():
        names, labels = promql_names(target["expr"])
        unknown = {n for n in names if documented(n) is None}
        assert not unknown, f"{title}: {unknown} not exported by streams/observability/metrics.py"
        metrics = {documented(n) for n in names}
        used |= metrics
        allowed = set().union(*(DOCUMENTED_METRICS[m] for m in metrics)) | TARGET_LABELS
        allowed |= {"le"} if any(n.endswith("_bucket") for n in names) else set()
        assert labels <= allowed, f"{title}: labels {labels - allowed} do not exist on {metrics}"
        # an aggregation keeps only its `by` labels; a legend naming another one renders empty
        outer = re.search(r"\bby\s*\(([^)]*)\)", target["expr"])
        shown = {s.strip() for s in outer.group(1).split(",")} if outer else allowed
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend <= shown, f"{title}: legend {legend - shown} is not a label of the result"
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            for query in {var["definition"], var["query"]["query"]}:
                metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query).groups()
                assert label in DOCUMENTED_METRICS[metric], f"variable {var['name']}: {query}"
    assert used == set(DOCUMENTED_METRICS), f"no panel for {set(DOCUMENTED_METRICS) - used}"


def test_documented_metrics_are_what_the_code_exports():
    from streams.observability.metrics import METRIC_NAMES, PipelineMetrics

    exported = PipelineMetrics().labels_by_metric()
    assert exported == DOCUMENTED_METRICS
    assert set(METRIC_NAMES) == set(exported)


# ---------------------------------------------------------------- alert rules


def alert_rules() -> list[dict]:
    return [
        rule
        for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]
        for rule in group["rules"]
    ]


def test_alert_rules_are_complete_and_the_operator_manifest_matches():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for r in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(r), r.get("alert")
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s")), r["alert"]
    rule = yaml.safe_load(PROMETHEUS_RULE_FILE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["namespace"] == "billing"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS_FILE.read_text())["groups"], (
        "infra/k8s/prometheus-rules.yaml is out of step with infra/prometheus/alerts.yml "
        "(regenerate it: see its header)"
    )


def test_alert_rules_use_only_exported_or_listed_metrics_and_their_labels():
    known = {**DOCUMENTED_METRICS, **PROCESS_METRICS, **EXTERNAL_METRICS}
    for r in alert_rules():
        names, labels = promql_names(r["expr"])
        metrics = {documented(n) or n for n in names}
        unknown = metrics - set(known)
        assert not unknown, (
            f"{r['alert']}: {unknown} is neither exported by streams/observability/metrics.py nor "
            "listed"
        )
        allowed = set().union(*(known[m] for m in metrics)) | TARGET_LABELS
        allowed |= {"le"} if any(n.endswith("_bucket") for n in names) else set()
        assert labels <= allowed, (
            f"{r['alert']}: labels {labels - allowed} do not exist on {metrics}"
        )
        for label in re.findall(r"\$labels\.(\w+)", " ".join(r["annotations"].values())):
            assert label in allowed, (
                f"{r['alert']}: the annotation uses {label}, which the result does not have"
            )


def test_process_metrics_the_rules_use_are_exported():
    from streams.observability.metrics import PipelineMetrics

    text = PipelineMetrics().exposition().decode()
    used = {n for r in alert_rules() for n in promql_names(r["expr"])[0] if n in PROCESS_METRICS}
    assert used and all(re.search(rf"^{n} ", text, re.M) for n in used), used


def test_alert_rules_cover_the_failure_modes():
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    every = " ".join(exprs.values())
    for metric in (
        "kafka_consumergroup_lag",
        "billing_consumer_lag",
        "billing_event_age_seconds",
        "billing_events_rejected_total",
        "billing_hour_close_delay_seconds_bucket",
        "kube_statefulset_status_replicas_ready",
        "billing_sink_insert_failures_total",
    ):
        assert metric in every, f"no alert on {metric}"
    exit_codes = {
        (m.group(1), int(m.group(2)))
        for e in exprs.values()
        for m in [re.search(r'container="(\w+)".*last_terminated_exitcode\{[^}]*\}\) == (\d)', e)]
        if m
    }
    from streams.sink.clickhouse import SinkHalted  # noqa: F401 - exit code 3 in streams/cli/common.py
    from streams.worker.stall import EXIT_ROUND_FAILED, EXIT_STALLED

    assert {("worker", EXIT_STALLED), ("worker", EXIT_ROUND_FAILED), ("sink", 3)} <= exit_codes, (
        exit_codes
    )


def test_alert_expressions_parse_as_promql():
    import promql_parser as parser  # a test dependency (pyproject.toml [test])

    for r in alert_rules():
        parser.parse(r["expr"])


def test_alert_rules_name_the_deployed_groups_topics_and_workloads():
    cm = configmap()
    groups = {
        cm.get("WORKER_APP_ID", SETTINGS["WORKER_APP_ID"][0]),
        cm.get("SINK_GROUP_ID", SETTINGS["SINK_GROUP_ID"][0]),
    }
    prefix = cm.get("KAFKA_TOPIC_PREFIX", SETTINGS["KAFKA_TOPIC_PREFIX"][0])
    sts = k8s_object("StatefulSet", "billing-worker")
    containers_by_name = {c["name"] for _, pod in pod_specs() for c in pod["containers"]}
    for r in alert_rules():
        for value in re.findall(r'consumergroup="([^"]+)"', r["expr"]):
            assert value in groups, f"{r['alert']}: group {value}"
        for value in re.findall(r'topic="([^"]+)"', r["expr"]):
            assert value.startswith(prefix), f"{r['alert']}: topic {value}"
        for value in re.findall(r'statefulset="([^"]+)"', r["expr"]):
            assert value == sts["metadata"]["name"], r["alert"]
        for value in re.findall(r'deployment="([^"]+)"', r["expr"]):
            assert k8s_object("Deployment", value), r["alert"]
        for value in re.findall(r'container="([^"]+)"', r["expr"]):
            assert value in containers_by_name, f"{r['alert']}: container {value}"
        for value in re.findall(r'namespace="([^"]+)"', r["expr"]):
            assert value == "billing", r["alert"]


def test_prometheus_loads_the_rules_and_scrapes_kafka_exporter():
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    prometheus = compose()["services"]["prometheus"]
    mounted = {
        v.split(":")[1]: (COMPOSE_FILE.parent / v.split(":")[0]).resolve()
        for v in prometheus["volumes"]
        if v.startswith(".")
    }
    assert [mounted[path] for path in config["rule_files"]] == [ALERTS_FILE.resolve()]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (target,) = jobs["kafka-exporter"]["static_configs"][0]["targets"]
    host, port = target.rsplit(":", 1)
    exporter = compose()["services"][host]
    assert split_image(exporter["image"])[0] == "danielqsj/kafka-exporter" and port == "9308"
    assert any(a.startswith("--kafka.server=kafka:") for a in exporter["command"])
    deploy = k8s_object("Deployment", "billing-kafka-exporter")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert (
        "--kafka.server=$(KAFKA_BOOTSTRAP_SERVERS)" in c["args"]
        and "--sasl.password=$(KAFKA_SASL_PASSWORD)" in c["args"]
    )
    svc = k8s_object("Service", "billing-kafka-exporter")
    assert (
        svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    )
    assert (
        not k8s_object("Service", "billing-metrics")["spec"]["selector"].items()
        <= deploy["spec"]["template"]["metadata"]["labels"].items()
    )


def test_kustomization_lists_every_manifest_but_the_templates():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # secret.yaml would overwrite the real passwords; the PrometheusRule needs the operator's CRDs
    assert present - listed == {"secret.yaml", "prometheus-rules.yaml"} and listed <= present


# ---------------------------------------------------------------- durability and hygiene


def test_brokers_do_not_create_topics_on_their_own():
    kafka = compose_env(compose()["services"]["kafka"])
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    env = compose_env(app_services()["worker"])
    assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) <= int(env["KAFKA_REPLICATION_FACTOR"]) == 1


def test_clickhouse_healthcheck_probes_the_real_listener():
    # the image's temporary init server listens on 127.0.0.1 only
    test = " ".join(as_argv(compose()["services"]["clickhouse"]["healthcheck"]["test"]))
    assert "/ping" in test and not re.search(r"127\.0\.0\.1|localhost|\[::1\]", test), test
    assert "http://clickhouse:8123/" in test


def test_kustomize_builds_the_manifests():
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    r = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(r.stdout) if doc)
    assert (
        kinds.count("StatefulSet") == 1 and "PrometheusRule" not in kinds and "Secret" not in kinds
    )
