"""The Kubernetes manifests in conf/kubernetes: valid (kubernetes-validate --strict, offline)
and holding what the README promises for the rotator container."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT_ROOT
from tests.test_container import image_healthcheck

MANIFESTS = sorted((PROJECT_ROOT / "conf" / "kubernetes").glob("*.yaml"))


def validator() -> str:
    found = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent /
                                                       "kubernetes-validate")
    assert Path(found).exists(), "kubernetes-validate is not installed (tests/requirements.txt)"
    return found


def validate(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([validator(), "--strict", *map(str, paths)], capture_output=True,
                          text=True, timeout=120)


def test_there_are_both_layouts():
    assert {p.name for p in MANIFESTS} == {"sidecar.yaml", "two-pod.yaml"}


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
    assert container["livenessProbe"]["exec"]["command"] == image_healthcheck()
    assert {"requests", "limits"} <= set(container["resources"])
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/app/models")
    assert models


def test_the_two_pod_layout_turns_the_rescan_on():
    (_, container), = rotator_containers(PROJECT_ROOT / "conf" / "kubernetes" / "two-pod.yaml")
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert 0 < int(env["RESCAN_INTERVAL"]) <= 60
