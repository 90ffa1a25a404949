"""conf/kubernetes/scale-out.yaml: valid (kubernetes-validate --strict, offline), no shared
volume, and its parts wired to each other: the serving replicas' endpoints.yml (read by real
Rasa's own reader) pulls from the Service that reaches the rotator's model server."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
import yaml

from tests.helpers import PROJECT_ROOT
from tests.real_rasa import rasa_environment, rasa_python
from tests.test_kubernetes import validate

MANIFEST = PROJECT_ROOT / "conf" / "kubernetes" / "scale-out.yaml"


@pytest.fixture(scope="module")
def documents() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all(MANIFEST.read_text())}


def values_of(key: str, node):
    """Every value of `key` anywhere in a parsed document (claims, templates, inline)."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from values_of(key, value)
    elif isinstance(node, list):
        for item in node:
            yield from values_of(key, item)


def pod_of(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def trainer(documents):
    deployments = [d for (kind, _), d in documents.items() if kind == "Deployment"
                   and any(c["image"].startswith("rasa-model-rotator")
                           for c in pod_of(d)["containers"])]
    assert len(deployments) == 1, "one trainer Deployment with the rotator as its sidecar"
    pod = pod_of(deployments[0])
    rotator = next(c for c in pod["containers"] if c["image"].startswith("rasa-model-rotator"))
    rasa = next(c for c in pod["containers"] if c["image"].startswith("rasa/rasa"))
    return deployments[0], pod, rasa, rotator


def serving(documents):
    deployment, = [d for (kind, _), d in documents.items() if kind == "Deployment"
                   and all(not c["image"].startswith("rasa-model-rotator")
                           for c in pod_of(d)["containers"])]
    return deployment, pod_of(deployment)["containers"][0]


def test_passes_strict_validation():
    result = validate(MANIFEST)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_shared_volume_anywhere(documents):
    modes = list(values_of("accessModes", list(documents.values())))
    assert modes and all(m == ["ReadWriteOnce"] for m in modes), modes
    deployment, _, _, _ = trainer(documents)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    serving_deployment, _ = serving(documents)
    assert not pod_of(serving_deployment).get("volumes", []) or all(
        "persistentVolumeClaim" not in v for v in pod_of(serving_deployment)["volumes"])


def test_trainer_has_the_training_api_and_the_model_server(documents):
    deployment, pod, rasa, rotator = trainer(documents)
    assert "--enable-api" in rasa["args"]
    shared = {m["name"] for m in rasa["volumeMounts"]} & {m["name"]
                                                          for m in rotator["volumeMounts"]}
    assert shared, "rasa and the rotator share the models volume"
    env = env_of(rotator)
    port = int(env["MODEL_SERVER_PORT"]["value"])
    assert env["MODEL_SERVER_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]
    named = {p["name"]: p["containerPort"] for p in rotator["ports"]}
    assert named["model-server"] == port
    for probe in ("livenessProbe", "readinessProbe"):
        assert rotator[probe]["httpGet"]["port"] == "model-server", probe
        assert rotator[probe]["httpGet"]["path"] in ("/healthz", "/readyz"), probe
        assert "exec" not in rotator[probe]
    security = rotator["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
    assert security["capabilities"]["drop"] == ["ALL"]


def test_the_replicas_pull_from_the_service_that_reaches_the_model_server(documents):
    deployment, pod, _, rotator = trainer(documents)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    serving_deployment, replica = serving(documents)
    assert serving_deployment["spec"]["replicas"] >= 2
    volume = next(v for v in pod_of(serving_deployment)["volumes"] if "configMap" in v)
    mount = next(m for m in replica["volumeMounts"] if m["name"] == volume["name"])
    config = documents[("ConfigMap", volume["configMap"]["name"])]
    endpoints_path = replica["args"][replica["args"].index("--endpoints") + 1]
    assert endpoints_path == f"{mount['mountPath']}/endpoints.yml"
    models = yaml.safe_load(config["data"]["endpoints.yml"])["models"]
    url = models["url"]
    service_name, port_path = url.removeprefix("http://").split(":", 1)
    service = documents[("Service", service_name)]
    assert service["spec"]["selector"].items() <= labels.items()
    port_text, path = port_path.split("/", 1)
    service_port = next(p for p in service["spec"]["ports"] if p["port"] == int(port_text))
    assert service_port["targetPort"] == "model-server"
    assert path == "model"
    # The token comes from the same Secret on both sides, through the environment.
    variable = models["token"].removeprefix("${").removesuffix("}")
    secret = env_of(replica)[variable]["valueFrom"]["secretKeyRef"]
    assert secret == env_of(rotator)["MODEL_SERVER_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert 0 < models["wait_time_between_pulls"] <= 60
    for probe in ("livenessProbe", "readinessProbe"):
        assert "httpGet" in replica[probe], probe


def test_real_rasa_reads_that_endpoints_yml_as_meant(documents, tmp_path):
    config = documents[("ConfigMap", "rasa-serving-endpoints")]
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(config["data"]["endpoints.yml"])
    script = textwrap.dedent(f"""
        import json
        from rasa.utils.endpoints import read_endpoint_config
        model = read_endpoint_config({str(endpoints)!r}, "models")
        print(json.dumps({{"url": model.url, "token": model.token,
                          "token_name": model.token_name,
                          "wait": model.kwargs.get("wait_time_between_pulls")}}))
    """)
    env = {**rasa_environment(), "MODEL_SERVER_TOKEN": "from-the-secret"}
    done = subprocess.run([str(rasa_python()), "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    read = json.loads(done.stdout.strip().splitlines()[-1])
    assert read == {"url": "http://rasa-model-server:8080/model", "token": "from-the-secret",
                    "token_name": "token", "wait": 10}
