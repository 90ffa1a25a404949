"""What the tool costs at rest: `python -m tests.benchmark_lean [--quick] [--no-docker]`.

Prints:
- the health check's CPU (`getrusage(RUSAGE_CHILDREN)` around each run, 30 runs, median and
  p90): the probes' command (the image's HEALTHCHECK without its hold, `python -S -c ...`)
  and the light check `python -m worker.surface.health` next to `python -m worker status` and
  a bare `python -c pass`, on this machine against the tool started in a temporary folder,
  and in the container (`docker exec`) when a Docker engine answers;
- Docker: seconds from `docker run` to `healthy` (3 runs), the CPU of one probe in dockerd,
  containerd and the container's shim with its children (runc, the check), and what the
  image's probes cost per idle hour as % of one core (the same figures for a container
  without health check subtracted);
- idle PSS (`/proc/PID/smaps_rollup`) of every process of the tree after 60 s idle (with
  `--quick`: 10 s), per process and in all, here and in the container.

worker/ is compiled to bytecode first (as the image does at build time): without it every
Python start compiles the modules it imports and the figures measure the compiler. The image
is built from this checkout (tag rasa-model-rotator-bench:lean) unless --image names one.
Takes about 9 minutes (`--quick`: about 3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import PROJECT_ROOT, RunningTool, tool_environment, wait_for
from tests.test_container import light_check, probe_command

RUNS = 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MEASURE = """
import resource, subprocess, sys
runs = []
for _ in range({runs}):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run({command!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)  # a failing command would measure its failure
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    runs.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
print(" ".join(str(r) for r in runs))
"""


def cpu_ms(command: list[str], runs: int = RUNS, prefix: tuple[str, ...] = (),
           **kwargs) -> tuple[float, float]:
    """(median, p90) of the CPU one run of `command` costs, in ms, measured by a Python
    that runs it `runs` times (inside the container when `prefix` is a `docker exec`)."""
    script = MEASURE.format(runs=runs, command=command)
    python = "python" if prefix else sys.executable
    out = subprocess.run([*prefix, python, "-c", script], capture_output=True, text=True,
                         check=True, timeout=600, **kwargs).stdout
    values = sorted(float(v) * 1000 for v in out.split())
    return statistics.median(values), values[int(len(values) * 0.9) - 1]


def tree(pid: int) -> list[int]:
    pids = [pid]
    for parent in pids:
        try:
            pids += [int(p) for p in
                     Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except OSError:
            continue
    return pids


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def name_of(pid: int) -> str:
    words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    text = " ".join(w.decode(errors="replace") for w in words if w)
    for name in ("reader", "rotator", "guard", "model-server", "sleep"):
        if name in text.split():
            return name
    return "supervisord" if "worker" in text else text[:30]


def idle_pss(root_pid: int) -> dict[str, float]:
    return {f"{name_of(pid)} ({pid})": pss_mib(pid) for pid in tree(root_pid)}


def show_pss(where: str, per_process: dict[str, float]) -> None:
    print(f"idle PSS, {where}: " + ", ".join(f"{k} {v:.1f}" for k, v in per_process.items())
          + f"; total {sum(per_process.values()):.1f} MiB over {len(per_process)} processes")


def bench_vm(idle_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-lean-") as folder:
        root = Path(folder)
        (root / "models").mkdir()
        env = tool_environment(root, THROTTLE_DELAY="5000", RESCAN_INTERVAL="60")
        tool = RunningTool(root, env)
        try:
            tool.ready(60)
            check = [sys.executable, "-m", "worker.surface.health"]
            wait_for(lambda: subprocess.run(check, cwd=root, env=env,
                                            capture_output=True).returncode == 0, 60,
                     message="healthy")
            for label, command in (("the probes' command (python -S -c ...)",
                                    probe_command()),
                                   ("light check (python -m worker.surface.health)", check),
                                   ("python -m worker status", [sys.executable, "-m",
                                                                "worker", "status"]),
                                   ("bare python -c pass", [sys.executable, "-c", "pass"])):
                median, p90 = cpu_ms(command, cwd=root, env=env)
                print(f"health-check CPU, this machine, {label}: median {median:.1f} ms, "
                      f"p90 {p90:.1f} ms ({RUNS} runs)")
            time.sleep(idle_s)
            show_pss(f"this machine after {idle_s:.0f} s", idle_pss(tool.process.pid))
        finally:
            tool.stop()


def docker(*args: str, timeout: float = 600) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True,
                          timeout=timeout).stdout.strip()


def daemons_cpu_s(container_id: str) -> tuple[float, float]:
    """CPU seconds so far of dockerd and containerd, and of the container's shim with its
    reaped children (runc and every exec'd probe)."""
    daemons = shim = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm not in ("dockerd", "containerd", "containerd-shim"):
                continue
            if comm == "containerd-shim" and container_id not in \
                    (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if comm == "containerd-shim":
            shim += sum(int(v) for v in fields[11:15]) / CLOCK_TICKS  # with reaped children
        else:
            daemons += sum(int(v) for v in fields[11:13]) / CLOCK_TICKS
    return daemons, shim


def container_pid1(container_id: str) -> int:
    return int(docker("inspect", "-f", "{{.State.Pid}}", container_id))


def bench_docker(image: str, idle_s: float, cost_window_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-lean-") as folder:
        models = Path(folder) / "models"
        models.mkdir()
        os.chown(models, 1000, 2000)
        run = ("run", "-d", "--network", "host", "-v", f"{models}:/app/models")
        seconds = []
        for _ in range(3):
            started = time.monotonic()
            cid = docker(*run, image)
            try:
                wait_for(lambda cid=cid: docker("inspect", "-f", "{{.State.Health.Status}}",
                                                cid) == "healthy", 120, interval=0.05,
                         message="docker reports healthy")
                seconds.append(time.monotonic() - started)
            finally:
                docker("rm", "-f", cid)
        print("time to healthy (docker run to `healthy`): "
              + ", ".join(f"{s:.2f}" for s in seconds) + " s")

        quiet = docker(*run, "--no-healthcheck", image)
        probed = None
        try:
            # The daemons' own idle work, with no probe anywhere: subtracted below.
            time.sleep(10)
            before = daemons_cpu_s(quiet)[0]
            time.sleep(cost_window_s / 2)
            baseline_per_s = (daemons_cpu_s(quiet)[0] - before) / (cost_window_s / 2)
            probed = docker(*run, image)
            wait_for(lambda: docker("inspect", "-f", "{{.State.Health.Status}}", probed)
                     == "healthy", 120, message="healthy")
            prefix = ("docker", "exec", probed)
            for label, command in (("the probes' command (python -S -c ...)", light_check()),
                                   ("light check (python -m ...)",
                                    ["python", "-m", "worker.surface.health"]),
                                   ("python -m worker status", ["python", "-m", "worker",
                                                                "status"]),
                                   ("bare python -c pass", ["python", "-c", "pass"])):
                median, p90 = cpu_ms(command, prefix=prefix)
                print(f"health-check CPU, in the container, {label}: median {median:.1f} ms, "
                      f"p90 {p90:.1f} ms ({RUNS} runs)")
            before = sum(daemons_cpu_s(quiet))
            for _ in range(20):
                subprocess.run(["docker", "exec", quiet, *light_check()], capture_output=True)
            per_exec = (sum(daemons_cpu_s(quiet)) - before) / 20
            print(f"one probe (docker exec of the light check): {per_exec * 1000:.0f} ms of "
                  "CPU in dockerd, containerd, the shim and its children")
            time.sleep(max(0.0, idle_s - 20))
            show_pss(f"the container after {idle_s:.0f} s", idle_pss(container_pid1(probed)))
            # What the probes cost: the daemons' CPU over their baseline, the probed shim's
            # (runc and the exec'd checks, reaped) over the quiet one's, and the tool's own
            # (supervisord and the rotator answering the holding checks) over the quiet one's.
            snapshot = (daemons_cpu_s(probed), daemons_cpu_s(quiet)[1],
                        tree_cpu_s(probed), tree_cpu_s(quiet))
            time.sleep(cost_window_s)
            (daemons, probed_shim), quiet_shim = daemons_cpu_s(probed), daemons_cpu_s(quiet)[1]
            parts = {"dockerd+containerd": daemons - snapshot[0][0]
                     - baseline_per_s * cost_window_s,
                     "shim, runc and the checks": probed_shim - snapshot[0][1]
                     - (quiet_shim - snapshot[1]),
                     "supervisord and programs": tree_cpu_s(probed) - snapshot[2]
                     - (tree_cpu_s(quiet) - snapshot[3])}
            added = sum(parts.values())
            share = added / cost_window_s * 100
            print(f"probe cost at idle (the image's HEALTHCHECK): {share:.2f} % of one core "
                  f"({added:.2f} s of CPU over {cost_window_s:.0f} s: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
                  + f"; {share * 36:.1f} s per idle hour)")
        finally:
            docker("rm", "-f", quiet, *([probed] if probed else []))


def tree_cpu_s(container_id: str) -> float:
    """CPU seconds so far of the container's supervisord and the programs it runs."""
    total = 0.0
    for pid in tree(container_pid1(container_id)):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter idle and cost windows")
    parser.add_argument("--no-docker", action="store_true", help="this machine only")
    parser.add_argument("--docker-only", action="store_true", help="the container only")
    parser.add_argument("--image", help="measure this image instead of building one")
    parser.add_argument("--window", type=float, help="seconds over which the probes' cost "
                        "at idle is measured (default 240; --quick: 60)")
    args = parser.parse_args()
    idle_s, window_s = (10.0, 60.0) if args.quick else (60.0, 240.0)
    window_s = args.window or window_s
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(PROJECT_ROOT / "worker")],
                   check=True)
    if not args.docker_only:
        bench_vm(idle_s)
    if args.no_docker:
        return
    if subprocess.run(["docker", "version"], capture_output=True).returncode != 0:
        print("Docker: no engine answers (`docker version`); container figures skipped")
        return
    image = args.image or "rasa-model-rotator-bench:lean"
    if not args.image:
        docker("build", "--network", "host", "-q", "-t", image, str(PROJECT_ROOT))
    print(f"Docker engine {docker('version', '--format', '{{.Server.Version}}')}, "
          f"image {image}")
    bench_docker(image, idle_s, window_s)


if __name__ == "__main__":
    main()
