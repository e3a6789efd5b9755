"""The Helm chart: lint, schema, rendering of every scenario, and agreement with the worker.

Rendered manifests are validated against the Kubernetes OpenAPI schemas that
``kubernetes-validate`` bundles (strict: unknown fields are errors), for the chart's
minimum Kubernetes version and the newest bundled one.  CRD kinds (ServiceMonitor,
PrometheusRule, ScaledObject, TriggerAuthentication) have no bundled schema, so they are
skipped there and checked structurally below instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import pytest
import yaml

from tests.helm.chart import (
    CHART,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    by_kind,
    env_list,
    env_values,
    helm_run,
    one,
    render,
    render_values,
    template_args,
    worker_container,
)
from worker.config import RUN_SETTINGS, env_names

pytestmark = pytest.mark.helm

CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}
# Variables the chart may set besides SHARDLEASE_*: the AWS SDK's region, the handler's import
# path (handlerInstall), and the Secret-held password composed into the Redis URL.
EXTRA_ALLOWED_ENV = {"AWS_REGION", "PYTHONPATH", "REDIS_PASSWORD"}
# Settings the chart sets itself rather than through `config`.
CHART_MANAGED = {
    "SHARDLEASE_WORKER_ID": "the pod name (fieldRef metadata.name): unique per pod",
    "SHARDLEASE_METRICS_PORT": "metrics.port (probes and the Service use it too)",
    "SHARDLEASE_REDIS_URL": "redis.url / redis.host / redis.existingSecret",
    "SHARDLEASE_REDIS_CA_FILE": "redis.tls.ca (a Secret mounted as a file)",
    "SHARDLEASE_REDIS_CERT_FILE": "redis.tls.clientCert",
    "SHARDLEASE_REDIS_KEY_FILE": "redis.tls.clientCert",
    "SHARDLEASE_REGION": "aws.region",
    "SHARDLEASE_ENDPOINT_URL": "aws.endpointUrl",
    "SHARDLEASE_DATA_DIR": "set to an emptyDir when no shared Redis is configured",
    "SHARDLEASE_PROCESSES": "processes (a top-level value, beside replicaCount and resources)",
}
K8S_VERSIONS = (
    re.sub(r"[^0-9.]", "", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]).strip(".") or "1.25.0",
    kv.latest_version() + ".0",
)
SCENARIO_IDS = [p.name for p in SCENARIOS]
ALL_CASES = [None, *SCENARIOS]
ALL_IDS = ["default", *SCENARIO_IDS]


def _render_case(helm: str, case: Path | None) -> list[dict[str, Any]]:
    return render(helm, [case] if case else None)


def _scenario_values(case: Path | None) -> dict[str, Any]:
    return yaml.safe_load(case.read_text()) if case else {}


def test_scenarios_exist() -> None:
    names = {p.name for p in SCENARIOS}
    for expected in ("secret-redis", "tls-acl", "irsa", "keda", "monitoring", "hpa", "grafana-dashboard"):
        assert f"{expected}-values.yaml" in names


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
def test_lint_strict(helm: str, case: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(case)] if case else [])
    done = helm_run(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
def test_renders_valid_kubernetes(helm: str, case: Path | None) -> None:
    docs = _render_case(helm, case)
    assert {d["kind"] for d in docs} >= {"Deployment", "ServiceAccount", "Service", "PodDisruptionBudget", "Pod"}
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
        assert len(doc["metadata"]["name"]) <= 63
        if doc["kind"] in CRD_KINDS:
            continue  # no bundled schema; see the structural tests below
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as err:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {err.message}")


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
def test_env_names_are_ones_the_worker_reads(helm: str, case: Path | None) -> None:
    docs = _render_case(helm, case)
    user_env = {e["name"] for e in _scenario_values(case).get("extraEnv", [])}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    allowed = env_names() | EXTRA_ALLOWED_ENV
    for container in pod["containers"]:
        names = [e["name"] for e in env_list(container)]
        assert len(names) == len(set(names)), f"duplicate env names: {names}"
        unknown = set(names) - allowed - user_env
        assert not unknown, f"env vars `shardlease run` does not read: {sorted(unknown)}"
    container = worker_container(docs)
    assert container["command"] == ["shardlease"]
    assert container["args"][0] == "run"
    assert {"SHARDLEASE_WORKER_ID", "SHARDLEASE_METRICS_PORT", "SHARDLEASE_SHUTDOWN_GRACE"} <= {
        e["name"] for e in env_list(container)
    }


def test_config_keys_map_one_to_one_onto_settings(helm: str, tmp_path: Path) -> None:
    """Every `config` key sets exactly its SHARDLEASE_* variable; with the chart-managed ones
    every setting of `shardlease run` is reachable."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    keys = set(values["config"])
    assert keys == set(schema["properties"]["config"]["properties"])
    flag_env = {s.flags[0].lstrip("-"): s.env for s in RUN_SETTINGS}
    expected: dict[str, str] = {}
    for key in keys:
        flag = re.sub(r"([A-Z])", r"-\1", key).lower()
        assert flag in flag_env, f"config.{key} is no flag of shardlease run (--{flag})"
        expected[key] = flag_env[flag]
    assert set(expected.values()) | set(CHART_MANAGED) == env_names()
    assert not set(expected.values()) & set(CHART_MANAGED)
    sample = {
        "streamArn": "", "table": "orders", "group": "g1", "handler": "pkg.mod:fn",
        "initialPosition": "LATEST", "batchSize": 7, "leaseTtl": 9, "renewInterval": "2s",
        "logFormat": "text", "logLevel": "DEBUG", "idlePollInterval": 0.5, "shutdownGrace": 12,
        "shardSyncInterval": "1m", "handoffTimeout": 3, "maxShards": 4, "metricsHost": "127.0.0.1",
        "handlerStyle": "lambda", "batchingWindow": 2, "maxRetryAttempts": 3, "maxRecordAge": -1,
        "bisectOnError": "true", "onFailure": "file:/tmp/dlq.jsonl", "stopOnFailure": "false",
        "filterPatterns": '[{"eventName": ["INSERT"]}]', "parallelizationFactor": 4, "handlerTimeout": 60,
        "onHandlerTimeout": "warn", "perShardMetrics": "true", "activePollInterval": 0.5, "quietAfter": "2m",
        "checkpointInterval": 5, "snapshot": "true", "snapshotSegments": 8, "snapshotReadUnits": 250,
        "snapshotMaxStreamLag": "2m", "maxGetrecordsPerSecond": 20,
    }
    assert set(sample) == keys
    env = env_values(worker_container(render_values(helm, {"config": sample}, tmp_path)))
    for key, value in sample.items():
        if value == "":
            assert expected[key] not in env
        else:
            assert env[expected[key]] == str(value), key


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
def test_probes_and_ports_match_the_worker(helm: str, case: Path | None) -> None:
    docs = _render_case(helm, case)
    container = worker_container(docs)
    env = env_values(container)
    (port,) = container["ports"]
    assert port["name"] == "metrics"
    assert str(port["containerPort"]) == env["SHARDLEASE_METRICS_PORT"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= one(docs, "Deployment")["spec"]["template"]["metadata"][
        "labels"
    ].items()


def test_metrics_port_value_moves_everything(helm: str) -> None:
    docs = render(helm, sets=["metrics.port=9555"])
    container = worker_container(docs)
    assert env_values(container)["SHARDLEASE_METRICS_PORT"] == "9555"
    assert container["ports"][0]["containerPort"] == 9555


def test_processes_value_is_the_processes_setting(helm: str) -> None:
    from worker.config import SETTINGS_BY_NAME, parse_processes

    setting = SETTINGS_BY_NAME["processes"]
    default = env_values(worker_container(render(helm)))[setting.env]
    assert default == "1" and parse_processes(default) == setting.default
    for value in ("4", "auto"):
        rendered = env_values(worker_container(render(helm, sets=[f"processes={value}"])))[setting.env]
        assert rendered == value
        parse_processes(rendered)  # the worker takes it


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
def test_grace_period_exceeds_shutdown_bound(helm: str, case: Path | None) -> None:
    docs = _render_case(helm, case)
    grace = float(env_values(worker_container(docs))["SHARDLEASE_SHUTDOWN_GRACE"])
    period = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period >= grace + 5, (period, grace)


def test_grace_period_follows_shutdown_grace_and_rejects_too_short(helm: str) -> None:
    docs = render(helm, sets=["config.shutdownGrace=90.5"])
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 101
    done = helm_run(helm, *template_args(sets=["config.shutdownGrace=60", "terminationGracePeriodSeconds=60"]))
    assert done.returncode != 0
    assert "must exceed config.shutdownGrace" in done.stderr
    docs = render(helm, sets=["terminationGracePeriodSeconds=45"])
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45


def test_security_context_and_writable_tmp(helm: str) -> None:
    docs = render(helm, [CHART / "ci" / "irsa-values.yaml"])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True and isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    # handlerInstall: pip --target into an emptyDir that the worker has on PYTHONPATH.
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["python", "-m", "pip"] and "--target" in init["command"]
    target = init["command"][init["command"].index("--target") + 1]
    assert "my-handlers==1.2.3" in init["args"]
    worker = worker_container(docs)
    assert env_values(worker)["PYTHONPATH"] == target
    assert target in {m["mountPath"] for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["handler"] and "emptyDir" in volumes["tmp"]


def test_topology_spread_and_pdb(helm: str) -> None:
    docs = render(helm, [CHART / "ci" / "secret-redis-values.yaml"])
    deployment = one(docs, "Deployment")
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1
    assert deployment["spec"]["replicas"] == 3


SENTINEL = "s3cr3t-Sentinel"


@pytest.mark.parametrize("case", ["secret-redis-values.yaml", "tls-acl-values.yaml"])
def test_named_secret_keeps_the_password_out(helm: str, case: str) -> None:
    done = helm_run(helm, *template_args([CHART / "ci" / case]))
    assert done.returncode == 0, done.stderr
    assert SENTINEL not in done.stdout
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert not by_kind(docs, "Secret"), "the chart must not create Secrets: they are referenced"
    env = env_list(worker_container(docs))
    names = [e["name"] for e in env]
    url = next(e for e in env if e["name"] == "SHARDLEASE_REDIS_URL")
    if "valueFrom" in url:
        assert url["valueFrom"]["secretKeyRef"] == {"name": "shardlease-redis", "key": "url"}
    else:
        # Composed: the password is a $(VAR) reference to an earlier secretKeyRef variable.
        assert url["value"] == "rediss://shardlease:$(REDIS_PASSWORD)@redis.example.internal:6380/2"
        password = next(e for e in env if e["name"] == "REDIS_PASSWORD")
        assert password["valueFrom"]["secretKeyRef"] == {"name": "shardlease-redis", "key": "password"}
        assert names.index("REDIS_PASSWORD") < names.index("SHARDLEASE_REDIS_URL")
    for entry in env:
        value = entry.get("value", "")
        assert not re.search(r"://[^@/]*:(?!\$\(REDIS_PASSWORD\))[^@/]+@", value), entry


def test_tls_files_are_mounted_from_secrets(helm: str) -> None:
    docs = render(helm, [CHART / "ci" / "tls-acl-values.yaml"])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = worker_container(docs)
    env = env_values(container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for var, volume, secret, key in [
        ("SHARDLEASE_REDIS_CA_FILE", "redis-ca", "redis-ca", "ca.crt"),
        ("SHARDLEASE_REDIS_CERT_FILE", "redis-client", "shardlease-redis-client", "tls.crt"),
        ("SHARDLEASE_REDIS_KEY_FILE", "redis-client", "shardlease-redis-client", "tls.key"),
    ]:
        assert env[var] == f"{mounts[volume]}/{key}"
        assert volumes[volume]["secret"]["secretName"] == secret
        assert {"key": key, "path": key} in volumes[volume]["secret"]["items"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicaCont=3"], "replicaCont"),
        (["config.batchSiz=3"], "batchSiz"),
        (["redis.tls.enabeld=true"], "enabeld"),
        (["replicaCount=three"], "replicaCount"),
        (["metrics.port=http"], "port"),
        (["config.batchSize=lots"], "batchSize"),
        (["config.initialPosition=OLDEST"], "initialPosition"),
        (["autoscaling.keda.maxReplicaCount=null"], "maxReplicaCount"),
        (["processes=0"], "processes"),
        (["processes=many"], "processes"),
        (["config.maxGetrecordsPerSecond=10000000"], "maxGetrecordsPerSecond"),  # the worker's limit: 1,000,000
    ],
)
def test_schema_rejects_typos_and_wrong_types(helm: str, sets: list[str], message: str) -> None:
    done = helm_run(helm, *template_args(sets=sets))
    assert done.returncode != 0, f"--set {sets} rendered"
    assert message in done.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicaCount=3"], "needs a shared Redis"),
        (["redis.url=redis://r:6379/0", "config.table=orders", "aws.region=eu-west-1",
          "autoscaling.hpa.enabled=true", "autoscaling.keda.enabled=true"], "at most one"),
        (["redis.url=redis://r:6379/0", "redis.host=r"], "only one of"),
        (["redis.host=r", "redis.existingSecret.passwordKey=pw"], "existingSecret.name is required"),
        (["redis.url=redis://r:6379/0", "redis.tls.enabled=true"], "rediss://"),
        (["redis.url=redis://r:6379/0", "autoscaling.keda.enabled=true"], "needs a table"),
    ],
)
def test_inconsistent_values_fail_with_a_fix(helm: str, sets: list[str], message: str) -> None:
    done = helm_run(helm, *template_args(sets=sets))
    assert done.returncode != 0
    assert message in done.stderr


def test_default_image_tag_is_app_version_and_digest_wins(helm: str) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = worker_container(render(helm))["image"]
    assert image.endswith(f":{chart['appVersion']}")
    digest = "sha256:" + "a" * 64
    assert worker_container(render(helm, sets=[f"image.digest={digest}"]))["image"].endswith("@" + digest)


def test_names_truncate_to_63_characters(helm: str) -> None:
    release = "a-long-release-name-at-the-53-character-helm-limit-xy"
    assert len(release) == 53
    docs = render(helm, release=release, sets=["nameOverride=a-long-name-override"])
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63
        for value in doc["metadata"]["labels"].values():
            assert len(str(value)) <= 63


def test_service_account_annotations_for_irsa(helm: str) -> None:
    docs = render(helm, [CHART / "ci" / "irsa-values.yaml"])
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert env_values(worker_container(docs))["AWS_REGION"] == "us-east-1"


def test_helm_test_hook_checks_readyz_through_the_service(helm: str) -> None:
    docs = render(helm)
    (pod,) = [d for d in by_kind(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    service = one(docs, "Service")
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/readyz" in script
    compile(script, "readyz-test", "exec")


def test_keda_dynamodb_streams_scaled_object(helm: str) -> None:
    docs = render(helm, [CHART / "ci" / "keda-values.yaml"])
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": deployment["metadata"]["name"]}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] == 8
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "aws-dynamodb-streams"
    meta = trigger["metadata"]
    assert meta == {"tableName": "orders", "awsRegion": "eu-west-1", "shardCount": "2", "activationShardCount": "1"}
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["podIdentity"] == {"provider": "aws", "identityOwner": "workload"}


def test_keda_prometheus_scaled_object(helm: str) -> None:
    docs = render(helm, [CHART / "ci" / "keda-prometheus-values.yaml"])
    assert not by_kind(docs, "TriggerAuthentication")
    (trigger,) = one(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "shardlease_iterator_age_seconds" in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == "120"
    assert trigger["metadata"]["serverAddress"].startswith("http://")


def test_hpa(helm: str) -> None:
    docs = render(helm, [CHART / "ci" / "hpa-values.yaml"])
    assert "replicas" not in one(docs, "Deployment")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]


def test_service_monitor_and_prometheus_rule(helm: str) -> None:
    docs = render(helm, [CHART / "ci" / "monitoring-values.yaml"])
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    rule = one(docs, "PrometheusRule")
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert "shardlease_iterator_age_seconds" in alerts["ShardleaseIteratorAgeHigh"]["expr"]
    assert "> 600" in alerts["ShardleaseIteratorAgeHigh"]["expr"]
    assert "shardlease_handler_errors_total" in alerts["ShardleaseHandlerErrors"]["expr"]
    assert "shardlease_shards_unowned" in alerts["ShardleaseShardsUnowned"]["expr"]
    for alert in alerts.values():
        assert alert["labels"]["team"] == "data" and alert["labels"]["severity"]
        assert re.fullmatch(r"\d+[smh]", alert["for"])
        assert "{{ $value" in alert["annotations"]["description"]
        assert f'service="{RELEASE}-shardlease-metrics"' in alert["expr"]


def test_grafana_dashboard_config_map(helm: str) -> None:
    """The sidecar's ConfigMap carries the dashboard file as it is (the same bytes as docs/grafana's copy)."""
    dashboard = (CHART / "dashboards" / "shardlease-dashboard.json").read_text()
    docs = render(helm, [CHART / "ci" / "grafana-dashboard-values.yaml"])
    config_map = one(docs, "ConfigMap")
    assert config_map["metadata"]["name"] == f"{RELEASE}-shardlease-dashboard"
    labels = config_map["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1" and labels["release"] == "kube-prometheus-stack"
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Streams"}
    assert config_map["data"] == {"shardlease-dashboard.json": dashboard.strip()}
    assert json.loads(config_map["data"]["shardlease-dashboard.json"])["uid"] == "shardlease"
    assert env_values(worker_container(docs))["SHARDLEASE_PER_SHARD_METRICS"] == "true"

    docs = render(helm, sets=["metrics.grafanaDashboard.enabled=true", "metrics.grafanaDashboard.label=dashboards",
                              "metrics.grafanaDashboard.labelValue=shardlease",
                              "metrics.grafanaDashboard.namespace=grafana", "fullnameOverride=" + "x" * 63])
    config_map = one(docs, "ConfigMap")
    assert config_map["metadata"]["labels"]["dashboards"] == "shardlease"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert config_map["metadata"]["namespace"] == "grafana"
    assert len(config_map["metadata"]["name"]) <= 63 and config_map["metadata"]["name"].endswith("-dashboard")
    done = helm_run(helm, *template_args(sets=["metrics.grafanaDashboard.enabled=true",
                                                "metrics.grafanaDashboard.label=not a label"]))
    assert done.returncode != 0 and "label" in done.stderr


def test_optional_features_off_by_default(helm: str) -> None:
    kinds = {d["kind"] for d in render(helm)}
    assert not kinds & (CRD_KINDS | {"HorizontalPodAutoscaler", "Secret", "ConfigMap"})
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == ""
    assert not values["handlerInstall"]["enabled"]
    assert not values["metrics"]["serviceMonitor"]["enabled"]
    assert not values["metrics"]["prometheusRule"]["enabled"]
    assert not values["metrics"]["grafanaDashboard"]["enabled"]
    assert not values["autoscaling"]["hpa"]["enabled"] and not values["autoscaling"]["keda"]["enabled"]


def _notes(helm: str, *sets: str) -> str:
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    for item in sets:
        args += ["--set", item]
    done = helm_run(helm, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


def test_no_default_handler_is_suggested(helm: str) -> None:
    """`shardlease run` requires --handler: the chart must not promise a default one."""
    for text in ((CHART / "values.yaml").read_text(), (CHART / "templates" / "NOTES.txt").read_text()):
        assert "log_records" not in text and "logs each record" not in text
    notes = _notes(helm, "config.table=orders")
    assert "Handler: NOT SET" in notes and "WARNING: config.handler is not set" in notes
    notes = _notes(helm, "config.table=orders", "config.handler=myapp.sink:handle")
    assert "Handler: myapp.sink:handle" in notes and "config.handler is not set" not in notes
