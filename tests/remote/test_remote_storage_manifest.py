"""conf/kubernetes/remote-storage.yaml: valid (kubernetes-validate --strict, offline), no
volume shared and none claimed, and its parts wired to each other: the trainer's rotator and
the serving replicas read the bucket from the same ConfigMap and Secret, and the replicas'
`--model` is the key the rotator publishes."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers import PROJECT_ROOT
from tests.test_container import light_check
from tests.test_kubernetes import validate
from tests.test_scale_out import env_of, pod_of, values_of
from worker.settings import read_settings

MANIFEST = PROJECT_ROOT / "conf" / "kubernetes" / "remote-storage.yaml"


@pytest.fixture(scope="module")
def documents() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all(MANIFEST.read_text())}


def containers(documents):
    for (kind, _), document in documents.items():
        if kind == "Deployment":
            for container in pod_of(document)["containers"]:
                yield document, container


def rotator(documents):
    (found,) = [(d, c) for d, c in containers(documents)
                if c["image"].startswith("rasa-model-rotator")]
    return found


def replicas(documents):
    (found,) = [(d, c) for d, c in containers(documents)
                if "--remote-storage" in c.get("args", [])]
    return found


def test_passes_strict_validation():
    result = validate(MANIFEST)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_claim_and_no_shared_volume(documents):
    assert not [kind for kind, _ in documents if kind == "PersistentVolumeClaim"]
    for (kind, _), document in documents.items():
        if kind == "Deployment":
            for volume in pod_of(document).get("volumes", []):
                assert set(volume) == {"name", "emptyDir"}, volume


def test_both_sides_read_the_same_bucket_settings_and_credentials(documents):
    trainer, sidecar = rotator(documents)
    deployment, rasa = replicas(documents)
    assert trainer is not deployment
    assert sidecar["envFrom"] == rasa["envFrom"]
    sources = {next(iter(source)) for source in rasa["envFrom"]}
    assert sources == {"configMapRef", "secretRef"}
    config = documents[("ConfigMap", rasa["envFrom"][0]["configMapRef"]["name"])]["data"]
    # Rasa's persistor creates the bucket with the region as LocationConstraint.
    assert {"BUCKET_NAME", "AWS_DEFAULT_REGION"} <= set(config)
    assert config.get("AWS_ENDPOINT_URL", "x") != ""  # Rasa's boto3 would take "" as a URL
    assert "kind: Secret" not in MANIFEST.read_text(), "no credential is committed"
    assert not any("SECRET" in name for name in env_of(sidecar))


def test_the_replicas_start_on_the_key_the_rotator_publishes(documents, tmp_path):
    _, sidecar = rotator(documents)
    _, rasa = replicas(documents)
    env = {name: e["value"] for name, e in env_of(sidecar).items() if "value" in e}
    assert env["REMOTE_STORAGE"] == "aws"
    config = next(d for (kind, _), d in documents.items() if kind == "ConfigMap")["data"]
    settings = read_settings({**env, **config, "TARGET_DIR": str(tmp_path / "models"),
                              "LATEST_MODEL_PATH": str(tmp_path / "models" / "latest.tar.gz")})
    args = rasa["args"]
    assert args[args.index("--remote-storage") + 1] == "aws"
    assert args[args.index("--model") + 1] == settings.remote_model_key


def test_the_rotator_is_locked_down_and_probed(documents):
    trainer, sidecar = rotator(documents)
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert sidecar["livenessProbe"]["exec"]["command"] == light_check()
    assert sidecar["startupProbe"]["exec"]["command"] == light_check()
    assert "/tmp" in list(values_of("mountPath", sidecar))


def test_the_replicas_working_folder_is_writable(documents):
    """Rasa writes each downloaded archive there and never removes it."""
    deployment, rasa = replicas(documents)
    mounts = {m["mountPath"]: m for m in rasa["volumeMounts"]}
    assert "/app" in mounts and not mounts["/app"].get("readOnly")
