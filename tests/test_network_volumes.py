"""What inotify cannot see: a file system mounted over the watched folder (the same blindness
as writes from another host on NFS/CIFS). The periodic rescan must find those models."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for_latest, write_model


@pytest.mark.parametrize("rescan", ["1", "0"])
def test_a_model_under_a_tmpfs_mounted_over_the_folder(start_tool, models, rescan):
    if os.geteuid() != 0:
        pytest.fail("needs root for a private mount namespace (unshare --mount), as CI has")
    # The tool runs in a mount namespace of its own: the tmpfs never reaches this machine.
    tool = start_tool(prefix=("unshare", "--mount", "--propagation", "private", "--"),
                      RESCAN_INTERVAL=rescan)
    tool.settled()
    pid = tool.process.pid  # supervisord, exec'd in the new mount namespace
    subprocess.run(["nsenter", "--target", str(pid), "--mount", "--",
                    "mount", "-t", "tmpfs", "-o", "size=64m", "rotator-test", str(models)],
                   check=True)
    inside = Path(f"/proc/{pid}/root{models}")  # the folder as the tool sees it
    model = inside / "20261126-101010-on-the-mount.tar.gz"
    write_model(model, 100_000)
    if rescan == "0":
        time.sleep(3)  # three times what a 1 s rescan needs
        assert not (inside / "latest.tar.gz").exists(), "inotify should be blind here"
        return
    wait_for_latest(inside, model.read_bytes(), 30,
                    message=f"the model on the mount published\n{tool.output}")
    assert not (models / "latest.tar.gz").exists(), "published outside the namespace"
    tool.wait_for_line("now names another folder")
    # And the next one on the mount too.
    second = inside / "20261126-101110-next.tar.gz"
    write_model(second, 100_000)
    wait_for_latest(inside, second.read_bytes(), 30)
