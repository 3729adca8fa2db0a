"""Offline checks of the deployment files: Dockerfile, docker-compose.yml, deploy/, k8s/.

No cluster and no Docker engine: built-in Kubernetes objects are validated with kubernetes-validate's
bundled (strict) OpenAPI schemas, the CRD objects (KEDA, Prometheus Operator) with the hand-written
schemas in k8s/crd-schemas/, docker-compose.yml with the compose-spec schema vendored by
check-jsonschema. Cross-file invariants (env var names, drain vs grace period, replicas vs
partitions, selectors and names) are checked directly.
"""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from worker.settings import iter_fields, load_settings

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD_SCHEMAS = K8S / "crd-schemas"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_LOCAL = REPO / "deploy" / "compose.local.yml"  # registry-free stand-ins (make compose-smoke)
DOCKERFILE = REPO / "Dockerfile"
K8S_VERSION = latest_version()  # newest schema set bundled with kubernetes-validate

# apiVersion groups served by CRDs (validated with k8s/crd-schemas/) rather than built-in schemas.
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
KUSTOMIZE_GROUP = "kustomize.config.k8s.io/"
ENV_NAME = re.compile(r"\bTAGGER_[A-Z0-9_]+\b")


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------


def _load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


class _ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags: `!reset` (drop the base value) and `!override` (replace, not merge)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: [] if isinstance(node, yaml.SequenceNode) else None)
_ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node)
    ),
)


def _load_compose(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return yaml.load(f, Loader=_ComposeLoader)  # a SafeLoader subclass


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, doc) for p in _manifest_files() for doc in _load_docs(p)]


def _is_crd(obj: dict[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).startswith(CRD_GROUPS)


def _builtin_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, o) for p, o in _all_objects() if not _is_crd(o)]


def _crd_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, o) for p, o in _all_objects() if _is_crd(o)]


def _obj_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, obj = item
    return f"{path.name}:{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def _one(kind: str) -> dict[str, Any]:
    found = [o for _, o in _all_objects() if o.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in k8s/, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    docs = _load_docs(COMPOSE)
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module")
def compose_local() -> dict[str, Any]:
    return _load_compose(COMPOSE_LOCAL)


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict[str, Any]]:
    """kind -> schema, from each schema's `kind` const (its apiVersion const is then checked)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(CRD_SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        props = schema["properties"]
        assert props["kind"]["const"] not in out, f"two schemas for {props['kind']['const']}"
        out[props["kind"]["const"]] = schema
    assert out, "no CRD schemas in k8s/crd-schemas/"
    return out


def _crd_errors(schemas: dict[str, dict[str, Any]], obj: dict[str, Any]) -> list[str]:
    schema = schemas.get(str(obj.get("kind")))
    assert schema is not None, f"no schema in k8s/crd-schemas/ for kind {obj.get('kind')}"
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


# ------------------------------------------------------------------------------------------------
# (a) built-in Kubernetes objects: kubernetes-validate, strict (unknown fields rejected)
# ------------------------------------------------------------------------------------------------


def test_k8s_dir_has_the_expected_objects() -> None:
    kinds = sorted(o["kind"] for _, o in _all_objects())
    for kind in (
        "ConfigMap", "Deployment", "Job", "PersistentVolumeClaim", "PodDisruptionBudget",
        "ScaledObject", "Secret", "Service", "ServiceMonitor",
    ):  # fmt: skip
        assert kind in kinds


@pytest.mark.parametrize("item", _builtin_objects(), ids=_obj_id)
def test_builtin_manifest_validates(item: tuple[Path, dict[str, Any]]) -> None:
    _, obj = item
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{_obj_id(item)} invalid for Kubernetes {K8S_VERSION}: {path}: {exc.message}")


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda d: d["spec"].__setitem__("replicas", "two"), id="replicas-not-int"),
        pytest.param(
            lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("livenesProbe", {}),
            id="unknown-field-strict",
        ),
        pytest.param(lambda d: d["spec"].pop("selector"), id="missing-selector"),
    ],
)
def test_validator_rejects_broken_deployment(breakage: Any) -> None:
    broken = copy.deepcopy(_one("Deployment"))
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_object_is_builtin_or_has_a_crd_schema(crd_schemas: dict) -> None:
    for _, obj in _crd_objects():
        assert obj["kind"] in crd_schemas
        assert crd_schemas[obj["kind"]]["properties"]["apiVersion"]["const"] == obj["apiVersion"]


# ------------------------------------------------------------------------------------------------
# (b) CRD objects: hand-written JSON Schemas in k8s/crd-schemas/
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("item", _crd_objects(), ids=_obj_id)
def test_crd_object_validates(item: tuple[Path, dict[str, Any]], crd_schemas: dict) -> None:
    assert _crd_errors(crd_schemas, item[1]) == []


@pytest.mark.parametrize(
    ("kind", "breakage"),
    [
        pytest.param("ScaledObject", lambda o: o["spec"].__setitem__("maxReplicaCount", "12"), id="so-max-str"),
        pytest.param("ScaledObject", lambda o: o["metadata"].pop("name"), id="so-no-name"),
        pytest.param("ScaledObject", lambda o: o["spec"]["triggers"][0]["metadata"].pop("topic"), id="so-no-topic"),
        pytest.param(
            "ScaledObject",
            lambda o: o["spec"]["triggers"][0]["metadata"].__setitem__("lagThreshold", 500),
            id="so-lag-int",
        ),
        pytest.param("ScaledObject", lambda o: o["spec"].__setitem__("maxReplicas", 3), id="so-unknown-field"),
        pytest.param("ScaledObject", lambda o: o.__setitem__("apiVersion", "keda.sh/v1"), id="so-apiversion"),
        pytest.param("ServiceMonitor", lambda o: o["spec"].pop("endpoints"), id="sm-no-endpoints"),
        pytest.param(
            "ServiceMonitor",
            lambda o: o["spec"]["endpoints"][0].__setitem__("interval", 15),
            id="sm-interval-int",
        ),
        pytest.param("TriggerAuthentication", lambda o: o["spec"]["secretTargetRef"][0].pop("key"), id="ta-no-key"),
    ],
)
def test_crd_schema_rejects_broken_object(kind: str, breakage: Any, crd_schemas: dict) -> None:
    broken = copy.deepcopy(_one(kind))
    breakage(broken)
    assert _crd_errors(crd_schemas, broken) != []


# ------------------------------------------------------------------------------------------------
# (c) docker-compose.yml: compose-spec JSON Schema (vendored by check-jsonschema)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    ref = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(ref.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_validates_against_compose_spec(compose: dict, compose_validator: Any) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator.iter_errors(compose)]
    assert errors == []


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda c: c["services"]["worker"].__setitem__("readonly", True), id="unknown-key"),
        pytest.param(
            lambda c: c["services"]["worker"]["depends_on"]["redis"].__setitem__("condition", "service_up"),
            id="bad-condition",
        ),
        pytest.param(lambda c: c["services"]["worker"].__setitem__("ports", 8080), id="ports-not-list"),
    ],
)
def test_compose_schema_rejects_broken_file(compose: dict, compose_validator: Any, breakage: Any) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert not compose_validator.is_valid(broken)


def test_compose_local_override_validates(compose_local: dict, compose_validator: Any) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator.iter_errors(compose_local)
    ]
    assert errors == []


def test_compose_local_override_only_swaps_registry_images(compose: dict, compose_local: dict) -> None:
    from scripts.podman import EXPORTER_IMAGE, KAFKA_STANDIN_IMAGE, REDIS_STANDIN_IMAGE, WORKER_IMAGE

    local = compose_local["services"]
    assert set(local) <= set(compose["services"]), "the override may only adjust services of docker-compose.yml"
    # registry-only images -> the stand-ins `make images` builds; ours -> the tags it builds
    assert local["kafka"]["image"] == local["kafka-init"]["image"] == KAFKA_STANDIN_IMAGE
    assert local["redis"]["image"] == REDIS_STANDIN_IMAGE
    assert local["worker"]["image"] == WORKER_IMAGE and local["exporter"]["image"] == EXPORTER_IMAGE
    # the production commands and health checks of kafka, kafka-init and redis run unchanged on the stand-ins
    for name in ("kafka", "kafka-init", "redis"):
        assert not {"command", "entrypoint", "healthcheck"} & set(local[name]), name
    # no host ports (the host may already run Redis on 6379); Prometheus is not started by default
    for name, svc in compose["services"].items():
        if "ports" in svc:
            assert local.get(name, {}).get("ports") == [], f"{name} still publishes {svc['ports']}"
    assert local["prometheus"]["profiles"] == ["prometheus"]
    # the smoke's exporter trains briefly but still exports the int8 model the worker serves
    script = " ".join(local["exporter"]["command"])
    assert "tagger train --data /tmp/smoke-train.jsonl --out /models/run --max-steps" in script
    assert "tagger export --checkpoint /models/run --out /models/current --int8" in script


def test_compose_worker_healthcheck_follows_the_port_setting(compose: dict) -> None:
    for name in ("worker", "worker-gpu"):
        kind, probe = compose["services"][name]["healthcheck"]["test"]
        # shell form, so the container's TAGGER_HTTP__PORT is expanded ($$ is compose's escape for $)
        assert kind == "CMD-SHELL"
        assert "http://127.0.0.1:$${TAGGER_HTTP__PORT:-8080}/livez" in probe


def test_compose_worker_hardening_and_dependencies(compose: dict) -> None:
    services = compose["services"]
    assert {"kafka", "kafka-init", "redis", "exporter", "worker", "worker-gpu", "prometheus"} <= set(services)
    worker = services["worker"]
    assert worker["build"]["target"] == "worker"
    assert services["exporter"]["build"]["target"] == "exporter"
    assert worker["read_only"] is True
    assert "/tmp" in worker["tmpfs"]
    assert worker["depends_on"] == {
        "kafka-init": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
        "exporter": {"condition": "service_completed_successfully"},
    }
    models = [v for v in worker["volumes"] if isinstance(v, dict) and v["target"] == "/models"]
    assert models and models[0]["read_only"] is True and models[0]["source"] == "models"
    assert "models" in compose["volumes"]
    assert "8080" in " ".join(str(p) for p in worker["ports"])
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["TAGGER_MODEL__PROVIDER"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "worker" not in compose["services"]["worker"].get("profiles", [])
    exporter_cmd = " ".join(services["exporter"]["command"])
    assert "tagger train --data /data/flipkart-20k.jsonl --out /models/run --max-minutes 20" in exporter_cmd
    assert "tagger export --checkpoint /models/run --out /models/current --int8" in exporter_cmd
    assert "../shared/data:/data:ro" in services["exporter"]["volumes"]


def test_prometheus_scrapes_the_worker(compose: dict) -> None:
    prom = compose["services"]["prometheus"]
    assert any(str(v).startswith("./deploy/prometheus.yml:") for v in prom["volumes"])
    cfg = _load_docs(REPO / "deploy" / "prometheus.yml")[0]
    targets = {
        t for job in cfg["scrape_configs"] if job.get("metrics_path", "/metrics") == "/metrics"
        for sc in job["static_configs"] for t in sc["targets"]
    }  # fmt: skip
    assert "worker:8080" in targets


# ------------------------------------------------------------------------------------------------
# (d) every TAGGER_* name used in the deployment files is a real setting, and the values load
# ------------------------------------------------------------------------------------------------

SETTINGS = {row[0] for row in iter_fields()}


@pytest.mark.parametrize(
    "path",
    [COMPOSE, COMPOSE_LOCAL, DOCKERFILE, *sorted(K8S.glob("*.yaml"))],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_tagger_env_names_exist_in_settings(path: Path) -> None:
    used = set(ENV_NAME.findall(path.read_text(encoding="utf-8")))
    assert used - SETTINGS == set(), f"{path.name}: unknown settings {sorted(used - SETTINGS)}"


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    import os

    for name in list(os.environ):
        if name.startswith("TAGGER_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return load_settings()


@pytest.mark.parametrize("service", ["worker", "worker-gpu"])
def test_compose_worker_env_loads(service: str, compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    env = compose["services"][service]["environment"]
    settings = _settings_from(env, monkeypatch)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.model.provider == ("cuda" if service == "worker-gpu" else "cpu")


def test_k8s_configmap_and_secret_env_load(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(_one("ConfigMap")["data"])
    env.update(_one("Secret")["stringData"])
    settings = _settings_from(env, monkeypatch)
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.model.provider == "cuda"


def test_deployment_secret_refs_exist() -> None:
    secret = _one("Secret")
    keys = set(secret["stringData"])
    container = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    assert {"TAGGER_KAFKA__SASL_PASSWORD", "TAGGER_REDIS__PASSWORD"} <= {r["key"] for r in refs}
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys
    assert container["envFrom"] == [{"configMapRef": {"name": _one("ConfigMap")["metadata"]["name"]}}]
    # secrets are never in the ConfigMap
    assert not {"TAGGER_KAFKA__SASL_PASSWORD", "TAGGER_REDIS__PASSWORD"} & set(_one("ConfigMap")["data"])


# ------------------------------------------------------------------------------------------------
# (e) kustomization.yaml lists exactly the k8s/*.yaml files
# ------------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kust = _load_docs(K8S / "kustomization.yaml")[0]
    assert kust["apiVersion"].startswith(KUSTOMIZE_GROUP) and kust["kind"] == "Kustomization"
    listed = kust["resources"]
    assert len(listed) == len(set(listed)), "duplicate resources"
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization lists missing file {name}"
    assert sorted(listed) == sorted(p.name for p in _manifest_files())


# ------------------------------------------------------------------------------------------------
# (f) graceful shutdown: grace period > drain timeout + margin
# ------------------------------------------------------------------------------------------------

DRAIN_MARGIN_S = 5
# The drain budget covers everything after SIGTERM, the commit and the consumer and producer
# closes included (worker/loop.py, Loop.shutdown; test_worker_loop checks it with a frozen broker,
# the fault suite's sigterm_frozen_broker with a real one): nothing to add on top of it.
CLOSE_BUDGET_S = 0


def _drain_default() -> float:
    row = next(r for r in iter_fields() if r[0] == "TAGGER_SHUTDOWN__DRAIN_TIMEOUT_S")
    return float(row[2])


def _k8s_grace() -> int:
    return int(_one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def test_termination_grace_exceeds_drain_timeout() -> None:
    drain = float(_one("ConfigMap")["data"].get("TAGGER_SHUTDOWN__DRAIN_TIMEOUT_S", _drain_default()))
    assert _k8s_grace() > drain + CLOSE_BUDGET_S + DRAIN_MARGIN_S


def test_compose_stop_grace_exceeds_drain_timeout(compose: dict) -> None:
    for name in ("worker", "worker-gpu"):
        svc = compose["services"][name]
        drain = float(svc["environment"].get("TAGGER_SHUTDOWN__DRAIN_TIMEOUT_S", _drain_default()))
        match = re.fullmatch(r"(\d+)s", svc["stop_grace_period"])
        assert match and int(match.group(1)) > drain + CLOSE_BUDGET_S + DRAIN_MARGIN_S
        # one drain budget everywhere: compose and Kubernetes give the worker the same grace
        assert int(match.group(1)) == _k8s_grace()
        assert drain == float(_one("ConfigMap")["data"]["TAGGER_SHUTDOWN__DRAIN_TIMEOUT_S"])


# ------------------------------------------------------------------------------------------------
# (g) autoscaling: max replicas = input partitions; KEDA watches the worker's topic and group
# ------------------------------------------------------------------------------------------------


def _compose_partitions(compose: dict, topic: str) -> int:
    script = " ".join(compose["services"]["kafka-init"]["command"])
    match = re.search(rf"--topic {re.escape(topic)} --partitions (\d+)", script)
    assert match, f"kafka-init does not create {topic} with --partitions"
    return int(match.group(1))


def test_max_replicas_equals_input_partitions(compose: dict) -> None:
    input_topic = _one("ConfigMap")["data"]["TAGGER_KAFKA__INPUT_TOPIC"]
    so = _one("ScaledObject")
    assert so["spec"]["maxReplicaCount"] == _compose_partitions(compose, input_topic) == 12
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]


def test_kafka_init_creates_every_topic(compose: dict) -> None:
    env = compose["services"]["worker"]["environment"]
    topics = ("INPUT", "OUTPUT", "DLQ", "FEEDBACK", "REVIEW")
    for key in (f"TAGGER_KAFKA__{t}_TOPIC" for t in topics):
        assert _compose_partitions(compose, env[key]) >= 1


def test_scaledobject_matches_worker() -> None:
    cm = _one("ConfigMap")["data"]
    so = _one("ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["topic"] == cm["TAGGER_KAFKA__INPUT_TOPIC"]
    assert meta["consumerGroup"] == cm["TAGGER_KAFKA__GROUP_ID"]
    assert meta["bootstrapServers"] == cm["TAGGER_KAFKA__BOOTSTRAP_SERVERS"]
    assert so["spec"]["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    if "authenticationRef" in trigger:
        assert trigger["authenticationRef"]["name"] == _one("TriggerAuthentication")["metadata"]["name"]


# ------------------------------------------------------------------------------------------------
# Deployment, Service, monitoring, storage: the invariants the worker relies on
# ------------------------------------------------------------------------------------------------


def test_deployment_security_probes_and_volumes() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "startupProbe" in c
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        port = c[probe]["httpGet"]["port"]
        assert ports.get(port, port) == 8080
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/models"]["readOnly"] is True
    claim = volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == _one("PersistentVolumeClaim")["metadata"]["name"] == "tagger-models"
    model_path = _one("ConfigMap")["data"]["TAGGER_MODEL__PATH"]
    assert model_path.startswith("/models/")


def test_exporter_job_writes_the_model_pvc() -> None:
    pod = _one("Job")["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert "tagger-models" in claims
    script = " ".join(pod["containers"][0]["args"])
    assert "tagger train" in script and "tagger export" in script and "--int8" in script


def test_service_pdb_and_servicemonitor_select_the_worker() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    svc = _one("Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert set(svc["spec"]["selector"].items()) <= set(labels.items())
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == 8080
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert set(pdb["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())
    sm = _one("ServiceMonitor")
    assert set(sm["spec"]["selector"]["matchLabels"].items()) <= set(svc["metadata"]["labels"].items())
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


# ------------------------------------------------------------------------------------------------
# (h) Dockerfile: worker stage is lean (no exporter/, no torch), hardened, and the default target
# ------------------------------------------------------------------------------------------------


def _dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (comments dropped, `\\` continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1) or f"stage{len(stages)}", [])
        if current is not None:
            current.append(line)
    return stages


def _pip_installs(lines: list[str]) -> list[str]:
    return [seg for line in lines if line.startswith("RUN") for seg in re.split(r"&&|;", line) if "pip install" in seg]


def test_dockerfile_worker_stage_is_lean_and_default() -> None:
    stages = _dockerfile_stages()
    assert list(stages)[-1] == "worker", "the worker must be the last (default) stage"
    worker = stages["worker"]
    copies = [line for line in worker if line.upper().startswith(("COPY", "ADD"))]
    assert not any("exporter" in line for line in copies)
    assert any("worker/" in line for line in copies) and any("schemas/" in line for line in copies)
    installs = _pip_installs(worker)
    assert installs and not any("torch" in seg or "[train" in seg for seg in installs)
    assert any(re.search(r"pip install \.(\s|$)", seg) for seg in installs)
    base = stages[worker[0].split()[1]] if worker[0].split()[1] in stages else []
    assert not any("torch" in seg or "exporter" in seg for seg in _pip_installs(base))
    joined = "\n".join(worker)
    assert re.search(r"^USER 10001", joined, re.M)
    assert 'ENTRYPOINT ["tagger"]' in joined and 'CMD ["worker"]' in joined
    assert re.search(r"^EXPOSE 8080$", joined, re.M)
    # shell form (not an exec array), so the probe follows TAGGER_HTTP__PORT
    assert re.search(
        r"^HEALTHCHECK .* CMD python .*urllib.*127\.0\.0\.1:\$\{TAGGER_HTTP__PORT:-8080\}/livez", joined, re.M
    )
    assert re.search(r"HOME=/tmp", joined)


def test_dockerfile_exporter_stage_pins_cpu_torch_first() -> None:
    exporter = _dockerfile_stages()["exporter"]
    installs = _pip_installs(exporter)
    torch_idx = next(i for i, s in enumerate(installs) if "torch==2.13.0" in s)
    train_idx = next(i for i, s in enumerate(installs) if ".[train]" in s)
    assert torch_idx < train_idx
    assert "--index-url https://download.pytorch.org/whl/cpu" in installs[torch_idx]
    assert any("exporter/" in line for line in exporter if line.startswith("COPY"))
    assert 'ENTRYPOINT ["tagger"]' in exporter


def test_dockerignore_keeps_context_small() -> None:
    lines = {line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()}
    # Deny everything, then re-include what the Dockerfile COPYs (exporter/ is used by the exporter stage).
    assert "**" in lines
    for needed in ("!pyproject.toml", "!README.md", "!worker/", "!schemas/", "!exporter/"):
        assert needed in lines
    copied = {
        line.split()[1].rstrip("/")
        for lines_ in _dockerfile_stages().values()
        for line in lines_
        if line.startswith("COPY") and "--from" not in line
    }
    assert copied <= {entry.lstrip("!").rstrip("/") for entry in lines}
