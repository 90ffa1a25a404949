"""Benchmarks: `python -m tests.benchmarks [--quick]`. Starts the tool the way a user does
(`python -m worker` in a temporary folder) and prints one table: each figure with its unit,
median and spread (min..max) over repeated runs. Takes about four minutes (`--quick`: about
one, with smaller models and fewer runs, for a smoke test).

Figures:
- publish lag: a writer's close of a 1 MiB model to the rename that makes latest.tar.gz
  whole, minus THROTTLE_DELAY;
- large publish: a 512 MiB incompressible model, the rotator's publish step (check + copy +
  fsync) called in-process next to `cp` + `sync FILE` of the same file into the same folder,
  and the whole tool's publish (its own timing, from the publish record) next to `cp` +
  `sync FILE` into the models folder; alternating who goes first; ratios; 2 GiB once;
- the rotator's peak memory (VmHWM) after publishing 512 MiB and then 2 GiB;
- memory at idle of supervisord and every program it runs: PSS (shared pages counted once)
  and RSS;
- CPU used by all of them over 60 idle seconds;
- an event storm: 10,000 models closed in the folder within a second, time until the
  folder converged (beyond THROTTLE_DELAY), and the CPU used.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from inotify_simple import INotify, flags

from tests.helpers import RunningTool, tool_environment, wait_for

MIB = 1024 * 1024
THROTTLE_MS = 1000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def incompressible_model(path: Path, size: int) -> None:
    """A model of random bytes, streamed like Rasa does. Random data is stored, not
    compressed, by zlib at any level; level 0 writes the same structure much faster."""
    with tarfile.open(path, "w:gz", compresslevel=0) as tar:
        chunk = 64 * MIB
        index = 0
        left = size
        while left > 0:
            part = min(chunk, left)
            info = tarfile.TarInfo(f"components/part-{index}.bin")
            info.size = part
            tar.addfile(info, io.BytesIO(os.urandom(part)))
            left -= part
            index += 1


def small_model_bytes(size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("components/part.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buffer.getvalue()


class Stack:
    """The tool running in a fresh folder; its processes found through /proc."""

    def __init__(self, root: Path, **settings):
        self.root = root
        self.models = root / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        env = tool_environment(root, THROTTLE_DELAY=str(THROTTLE_MS), **settings)
        self.tool = RunningTool(root, env)
        self.tool.ready(60)

    def pids(self) -> list[int]:
        pids = [self.tool.process.pid]
        for parent in list(pids):
            pids += _children(parent)
        return pids

    def pid_of(self, program: str) -> int:
        return self.tool.program_pid(program)

    def stop(self) -> None:
        self.tool.stop()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0])
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            values["HWM"] = int(line.split()[1])
    return values


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


class LatestRenames:
    """Timestamps of each rename onto latest.tar.gz, seen by inotify (not by polling)."""

    def __init__(self, folder: Path):
        self.inotify = INotify()
        self.inotify.add_watch(folder, flags.MOVED_TO)
        self.times: list[float] = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            for event in self.inotify.read(timeout=200):
                if event.name == "latest.tar.gz":
                    self.times.append(time.monotonic())

    def after(self, since: float, timeout: float = 60) -> float:
        return wait_for(lambda: next((t for t in self.times if t > since), None), timeout,
                        interval=0.001, message="a rename onto latest.tar.gz")

    def close(self) -> None:
        self._stop = True


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def bench_publish_lag(root: Path, runs: int) -> list[float]:
    stack = Stack(root / "lag")
    renames = LatestRenames(stack.models)
    lags = []
    try:
        for index in range(runs):
            data = small_model_bytes(MIB)
            path = stack.models / f"2026-lag-{index}.tar.gz"
            with open(path, "wb") as out:
                out.write(data)
            closed = time.monotonic()
            renamed = renames.after(closed)
            lags.append((renamed - closed) * 1000 - THROTTLE_MS)
            time.sleep(0.3)
    finally:
        renames.close()
        stack.stop()
    return lags


def publish_seconds(stack: Stack, source: Path) -> float:
    """Move a staged model in, wait for its publish; the rotator's own publish duration."""
    import json

    record_path = stack.models / ".latest.tar.gz.json"
    target = stack.models / source.name
    os.rename(source, target)
    wait_for(lambda: record_path.exists()
             and json.loads(record_path.read_text())["source"] == target.name, 300,
             interval=0.01, message=f"{target.name} published")
    return json.loads(record_path.read_text())["duration_s"]


def cp_sync_seconds(source: Path, folder: Path) -> float:
    """`cp` then `sync FILE` (an fsync of the copy alone, as the rotator does for its copy;
    a bare `sync` would also flush whatever else the machine has dirty)."""
    target = folder / "cp-copy.bin"
    started = time.monotonic()
    subprocess.run(["cp", str(source), str(target)], check=True)
    subprocess.run(["sync", str(target)], check=True)
    took = time.monotonic() - started
    target.unlink()
    subprocess.run(["sync"], check=True)  # the unlink's work, outside the measurement
    return took


def quiet_disk(seconds: float = 1.0) -> None:
    subprocess.run(["sync"], check=True)
    time.sleep(seconds)


def warm_up(model: Path, folder: Path) -> None:
    """One untimed copy of a fresh model. On this kind of machine the first large write
    after creating a model is 4-5x slower than the next ones, whoever makes it (seen with
    cp and with the rotator alike); without this, the order decides the ratio."""
    cp_sync_seconds(model, folder)
    quiet_disk()


def settle(stack: Stack, source: str) -> None:
    """Let the rotator finish pruning and the disk write it out before the next timing."""
    wait_for(lambda: sorted(n for n in os.listdir(stack.models) if n.endswith(".tar.gz"))
             == sorted([source, "latest.tar.gz"]), 60, message="the previous model pruned")
    quiet_disk()


def bench_in_process(root: Path, size: int, runs: int) -> dict:
    """The rotator's own publish step (check + copy + fsync, worker.folder.archive.copy_verified)
    called directly, against cp + sync FILE, same source and target folder, alternating."""
    from worker.folder.archive import copy_verified

    folder = root / "in-process"
    folder.mkdir()
    model = folder / "2026-in-process.tar.gz"
    incompressible_model(model, size)
    warm_up(model, folder)
    ours, theirs = [], []
    for index in range(runs):
        def publish():
            target = folder / "copy.tar.gz"
            started = time.monotonic()
            with open(model, "rb") as src, open(target, "wb") as dst:
                copy_verified(src.fileno(), dst.fileno(), os.fstat(src.fileno()).st_size)
            took = time.monotonic() - started
            target.unlink()
            quiet_disk()
            return took

        if index % 2:
            ours.append(publish())
            theirs.append(cp_sync_seconds(model, folder))
            quiet_disk()
        else:
            theirs.append(cp_sync_seconds(model, folder))
            quiet_disk()
            ours.append(publish())
    return {"ours": ours, "cp": theirs,
            "ratio": [a / b for a, b in zip(ours, theirs, strict=True)]}


def bench_large(root: Path, size: int, big_size: int, runs: int) -> dict:
    stack = Stack(root / "large")
    staging = stack.root / "staging"  # same file system, outside the watched folder
    staging.mkdir()
    ours, theirs = [], []
    try:
        for index in range(runs):
            model = staging / f"2026-large-{index}.tar.gz"
            incompressible_model(model, size)
            warm_up(model, staging)
            # cp writes into the models folder too, and the two alternate who goes first.
            if index % 2:
                ours.append(publish_seconds(stack, model))
                settle(stack, model.name)
                theirs.append(cp_sync_seconds(stack.models / model.name, stack.models))
            else:
                theirs.append(cp_sync_seconds(model, stack.models))
                ours.append(publish_seconds(stack, model))
                settle(stack, model.name)
        rotator = stack.pid_of("rotator")
        hwm_small = memory_kib(rotator)["HWM"]
        big = staging / "2026-large-big.tar.gz"
        incompressible_model(big, big_size)
        warm_up(big, staging)
        big_cp = cp_sync_seconds(big, staging)
        quiet_disk()
        big_seconds = publish_seconds(stack, big)
        settle(stack, big.name)
        hwm_big = memory_kib(rotator)["HWM"]
    finally:
        stack.stop()
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {"ours": ours, "cp": theirs, "ratio": ratios, "hwm_small": hwm_small,
            "hwm_big": hwm_big, "big_seconds": big_seconds, "big_cp": big_cp}


def bench_idle(root: Path, idle_s: float, samples: int) -> dict:
    stack = Stack(root / "idle")
    try:
        time.sleep(2)
        pids = stack.pids()
        pss, rss = [], []
        for _ in range(samples):
            totals = [memory_kib(pid) for pid in pids]
            pss.append(sum(t["Pss"] for t in totals) / 1024)
            rss.append(sum(t["Rss"] for t in totals) / 1024)
            time.sleep(0.2)
        per_program = {Path(_cmd(pid)).name: memory_kib(pid)["Pss"] / 1024 for pid in pids}
        before = cpu_seconds(pids)
        time.sleep(idle_s)
        cpu = cpu_seconds(pids) - before
    finally:
        stack.stop()
    return {"pss": pss, "rss": rss, "cpu": cpu, "per_program": per_program,
            "processes": len(pids)}


def _cmd(pid: int) -> str:
    words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    text = " ".join(w.decode() for w in words if w)
    for name in ("supervisord", "reader", "rotator", "model-server", "sleep"):
        if name in text:
            return name
    return text[:30]


def bench_storm(root: Path, files: int) -> dict:
    stack = Stack(root / "storm")
    data = small_model_bytes(256)
    try:
        pids = stack.pids()
        cpu_before = cpu_seconds(pids)
        started = time.monotonic()
        for index in range(files):
            with open(stack.models / f"storm-{index:05d}.tar.gz", "wb") as out:
                out.write(data)
        written = time.monotonic() - started
        newest = f"storm-{files - 1:05d}.tar.gz"

        def converged():
            names = [n for n in os.listdir(stack.models) if n.endswith(".tar.gz")]
            return sorted(names) == ["latest.tar.gz", newest]

        wait_for(converged, 300, interval=0.05, message="the storm folder converged")
        took = time.monotonic() - started
        cpu = cpu_seconds(pids) - cpu_before
    finally:
        stack.stop()
    return {"written_s": written, "converged_s": took, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes, few runs")
    args = parser.parse_args()
    quick = args.quick
    lag_runs = 7
    size, big_size, large_runs = ((32 * MIB, 128 * MIB, 2) if quick
                                  else (512 * MIB, 2048 * MIB, 6))
    idle_s = 10 if quick else 60
    storm = 2_000 if quick else 10_000

    root = Path(tempfile.mkdtemp(prefix="rotator-bench-", dir=os.environ.get("BENCH_DIR")))
    started = time.monotonic()
    try:
        lag = bench_publish_lag(root, lag_runs)
        in_process = bench_in_process(root, size, large_runs)
        large = bench_large(root, size, big_size, large_runs)
        idle = bench_idle(root, idle_s, 5)
        storm_result = bench_storm(root, storm)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = []

    def row(name, unit, values, runs, target=""):
        median, low, high = summary(values)
        rows.append((name, unit, f"{median:.2f}", f"{low:.2f}..{high:.2f}", str(runs), target))

    row("publish lag beyond THROTTLE_DELAY (1 MiB)", "ms", lag, len(lag), "< 20")
    row(f"check + copy + fsync {size // MIB} MiB, in-process", "s", in_process["ours"],
        len(in_process["ours"]))
    row(f"cp + sync {size // MIB} MiB, same file and folder", "s", in_process["cp"],
        len(in_process["cp"]))
    row("in-process / (cp + sync)", "ratio", in_process["ratio"], len(in_process["ratio"]),
        "<= 1.1")
    row(f"tool: publish {size // MIB} MiB (check + copy + fsync)", "s", large["ours"],
        len(large["ours"]))
    row(f"cp + sync {size // MIB} MiB, same disk", "s", large["cp"], len(large["cp"]))
    row("tool: publish / (cp + sync)", "ratio", large["ratio"], len(large["ratio"]), "<= 1.1")
    row(f"publish {big_size // MIB} MiB", "s", [large["big_seconds"]], 1)
    row(f"cp + sync {big_size // MIB} MiB, same disk", "s", [large["big_cp"]], 1)
    row(f"publish / (cp + sync), {big_size // MIB} MiB", "ratio",
        [large["big_seconds"] / large["big_cp"]], 1, "<= 1.1")
    row(f"rotator peak RSS after {size // MIB} MiB", "MiB", [large["hwm_small"] / 1024], 1)
    row(f"rotator peak RSS after {big_size // MIB} MiB", "MiB", [large["hwm_big"] / 1024], 1,
        "< 40, flat")
    row(f"idle PSS, all {idle['processes']} processes", "MiB", idle["pss"], len(idle["pss"]),
        "< 45")
    row(f"idle RSS, all {idle['processes']} processes", "MiB", idle["rss"], len(idle["rss"]))
    row(f"CPU over {idle_s:.0f} s idle, all processes", "s", [idle["cpu"]], 1, "~ 0")
    row(f"storm: {storm} models written", "s", [storm_result["written_s"]], 1)
    row(f"storm: converged beyond THROTTLE_DELAY ({storm} models)", "s",
        [storm_result["converged_s"] - THROTTLE_MS / 1000], 1)
    row("storm: CPU used, all processes", "s", [storm_result["cpu"]], 1)

    headers = ("figure", "unit", "median", "spread", "runs", "target")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
          f"Python {platform.python_version()}; took {time.monotonic() - started:.0f} s")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print("idle PSS per process (MiB): " + ", ".join(
        f"{name} {value:.1f}" for name, value in sorted(idle["per_program"].items())))


if __name__ == "__main__":
    main()
