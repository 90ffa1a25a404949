"""The Kubernetes manifests in conf/kubernetes: valid (kubernetes-validate --strict, offline)
and holding what the README promises for the rotator container."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT_ROOT
from tests.test_container import light_check

# The shared-volume layouts; scale-out.yaml (no shared volume) has tests/test_scale_out.py,
# remote-storage.yaml tests/remote/test_remote_storage_manifest.py.
MANIFESTS = sorted(p for p in (PROJECT_ROOT / "conf" / "kubernetes").glob("*.yaml")
                   if p.name not in ("scale-out.yaml", "remote-storage.yaml"))


def validator() -> str:
    found = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent /
                                                       "kubernetes-validate")
    assert Path(found).exists(), "kubernetes-validate is not installed (tests/requirements.txt)"
    return found


def validate(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([validator(), "--strict", *map(str, paths)], capture_output=True,
                          text=True, timeout=120)


def test_there_are_all_layouts():
    assert {p.name for p in (PROJECT_ROOT / "conf" / "kubernetes").glob("*.yaml")} == {
        "sidecar.yaml", "two-pod.yaml", "scale-out.yaml", "remote-storage.yaml"}


def test_every_manifest_passes_strict_validation():
    result = validate(*MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_is_strict(tmp_path):
    broken = tmp_path / "broken.yaml"
    text = (PROJECT_ROOT / "conf" / "kubernetes" / "sidecar.yaml").read_text()
    broken.write_text(text.replace("readOnlyRootFilesystem: true",
                                   "readOnlyRootFilesystem: true\n            readOnlyRoot: 1"))
    assert validate(broken).returncode != 0


def rotator_containers(path: Path):
    for document in yaml.safe_load_all(path.read_text()):
        spec = document["spec"]
        pod = spec["template"]["spec"] if "template" in spec else spec
        for container in pod.get("containers", []):
            if container["image"].startswith("rasa-model-rotator"):
                yield pod, container


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_rotator_container_is_locked_down_and_probed(path):
    found = list(rotator_containers(path))
    assert len(found) == 1
    pod, container = found[0]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["fsGroup"] == 2000
    # RUN_DIR (the image's /tmp/rasa-model-rotator) must be writable on a read-only root.
    tmp_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod["volumes"] if v["name"] == tmp_mount["name"])
    assert "emptyDir" in volume
    check = light_check()
    assert container["livenessProbe"]["exec"]["command"] == check
    # "starting" (exit 1) lasts until the first reconcile: liveness must not count it.
    assert container["startupProbe"]["exec"]["command"] == check
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert {"requests", "limits"} <= set(container["resources"])
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/app/models")
    assert models


def test_the_two_pod_layout_turns_the_rescan_on():
    (_, container), = rotator_containers(PROJECT_ROOT / "conf" / "kubernetes" / "two-pod.yaml")
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert 0 < int(env["RESCAN_INTERVAL"]) <= 60


def containers(path: Path, image_prefix: str):
    for document in yaml.safe_load_all(path.read_text()):
        spec = document["spec"]
        pod = spec["template"]["spec"] if "template" in spec else spec
        for container in pod.get("containers", []):
            if container["image"].startswith(image_prefix):
                yield container


def published_path(rotator: dict) -> str:
    """Where the rotator publishes: LATEST_MODEL_PATH, else the image's default (WORKDIR /app,
    TARGET_DIR models)."""
    env = {e["name"]: e.get("value") for e in rotator.get("env", [])}
    if env.get("LATEST_MODEL_PATH"):
        return env["LATEST_MODEL_PATH"]
    return f"{env.get('TARGET_DIR') or '/app/models'}/latest.tar.gz"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_rasa_loads_the_published_file_not_the_folder(path):
    # Given the folder, Rasa 3.6 loads the newest mtime there: a truncated model included.
    (rasa,) = containers(path, "rasa/")
    ((_, rotator),) = rotator_containers(path)
    args = rasa["args"]
    assert args[args.index("--model") + 1] == published_path(rotator)


def test_the_sidecar_keeps_rasa_in_sync_with_the_token_from_a_secret():
    path = PROJECT_ROOT / "conf" / "kubernetes" / "sidecar.yaml"
    (rasa,) = containers(path, "rasa/")
    ((_, rotator),) = rotator_containers(path)
    env = {e["name"]: e for e in rotator["env"]}
    assert env["RASA_URL"]["value"] == "http://localhost:5005"
    token = env["RASA_TOKEN"]
    assert "value" not in token, "the token must come from a Secret, not the manifest"
    secret = token["valueFrom"]["secretKeyRef"]
    # Rasa checks the same token: its --auth-token is the same Secret's key.
    rasa_env = {e["name"]: e for e in rasa["env"]}
    assert rasa["args"][rasa["args"].index("--auth-token") + 1] == "$(RASA_TOKEN)"
    assert rasa_env["RASA_TOKEN"]["valueFrom"]["secretKeyRef"] == secret
    assert "kind: Secret" not in path.read_text(), "no token value is committed"
