"""Remote storage figures: `python -m tests.benchmark_remote [--quick]` (about 3 minutes;
`--quick`: smaller files, one run each).

Against moto in server mode on 127.0.0.1 (tests/s3_server.py):
- upload throughput: our upload (worker/remote/s3.py `Bucket.upload`, what the rotator runs) of a
  256 MiB incompressible file next to boto3's `upload_file` of the same file to the same
  server, alternating who goes first; the ratio ours / theirs of the times;
- publish to key: the tool (`python -m worker`, REMOTE_STORAGE=aws) given a model, the time
  from its local publish (the publish record) to the bucket's key holding it (the rotator's
  own figure, and the test's HEAD polling), for 1 MiB and 64 MiB;
- added memory: PSS of supervisord and every program at idle, with REMOTE_STORAGE off and on
  (after the first upload), and the rotator's alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tests.benchmarks import _children, memory_kib
from tests.helpers import RunningTool, tool_environment, wait_for, write_model
from tests.s3_server import MotoServer, client_environment, create_bucket, s3_client


def spread(values: list[float]) -> str:
    return (f"{statistics.median(values):.2f} ({min(values):.2f}..{max(values):.2f}, "
            f"n={len(values)})")


def bench_throughput(server: MotoServer, root: Path, size: int, runs: int) -> dict:
    import boto3  # noqa: F401 - as the rotator imports it

    from worker.remote.s3 import Bucket

    path = root / "big.bin"
    with open(path, "wb") as out:
        for _ in range(size // (1 << 20)):
            out.write(os.urandom(1 << 20))
    client = s3_client(server.url)
    bucket = Bucket("models", server.url, 10, 120, 3)
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for run in range(runs):
        order = list(times) if run % 2 == 0 else list(reversed(times))
        for who in order:
            key = f"{who}-{run}.bin"
            started = time.monotonic()
            if who == "theirs":
                client.upload_file(str(path), "models", key)
            else:
                fd = os.open(path, os.O_RDONLY)
                try:
                    bucket.upload(fd, key, {"sha256": "x"}, lambda: False,
                                  threading.Condition())
                finally:
                    os.close(fd)
            times[who].append(time.monotonic() - started)
            client.delete_object(Bucket="models", Key=key)
    bucket.close()
    path.unlink()
    ours = times["ours"]
    return {"ours_mib_s": [size / t / 2**20 for t in ours],
            "theirs_mib_s": [size / t / 2**20 for t in times["theirs"]],
            "ratio": [a / b for a, b in zip(ours, times["theirs"], strict=True)]}


def tool_pss(tool: RunningTool) -> tuple[float, float]:
    """(PSS of supervisord and all its programs, PSS of the rotator) in MiB."""
    pids = [tool.process.pid, *_children(tool.process.pid)]
    total = sum(memory_kib(pid)["Pss"] for pid in pids) / 1024
    return total, memory_kib(tool.program_pid("rotator"))["Pss"] / 1024


def bench_tool(server: MotoServer, root: Path, sizes: list[int], runs: int) -> dict:
    results: dict = {"lag": {}, "lag_polled": {}}
    # Off: the same tool without the bucket.
    off_root = root / "off"
    off_root.mkdir()
    env = tool_environment(off_root, THROTTLE_DELAY="100")
    env.pop("REMOTE_STORAGE")
    tool = RunningTool(off_root, env)
    try:
        tool.ready()
        write_model(off_root / "models" / "m.tar.gz", 1 << 20, "m")
        tool.wait_for_line("published", 60)
        time.sleep(3)
        results["pss_off"] = tool_pss(tool)
    finally:
        tool.stop()

    on_root = root / "on"
    on_root.mkdir()
    env = tool_environment(on_root, THROTTLE_DELAY="100", **client_environment(server.url))
    tool = RunningTool(on_root, env)
    client = s3_client(server.url)
    try:
        tool.ready()
        for size in sizes:
            lags, polled = [], []
            for run in range(runs):
                staging = on_root / "staging.tar.gz"
                write_model(staging, size, f"m-{size}-{run}", compresslevel=0)
                digest = hashlib.sha256(staging.read_bytes()).hexdigest()
                mark = tool.line_count()
                os.rename(staging, on_root / "models" / f"2026-{size}-{run}.tar.gz")

                def holds(digest=digest):
                    try:
                        head = client.head_object(Bucket="models", Key="latest.tar.gz")
                    except Exception:  # noqa: BLE001 - not there yet
                        return None
                    return head["Metadata"].get("sha256") == digest and time.time()

                held_at = wait_for(holds, 300, 0.02, "the key holding the model")
                line = tool.wait_for_line("ms after the local publish", 60, after=mark)
                lags.append(float(re.search(r"; (\d+) ms after", line).group(1)) / 1000)
                record = json.loads(
                    (on_root / "models" / ".latest.tar.gz.json").read_text())
                polled.append(held_at - record["published_at"] - record["duration_s"])
            results["lag"][size] = lags
            results["lag_polled"][size] = polled
        time.sleep(3)
        results["pss_on"] = tool_pss(tool)
    finally:
        tool.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size = (32 if args.quick else 256) << 20
    runs = 1 if args.quick else 3
    server = MotoServer()
    try:
        for name, value in client_environment(server.url).items():
            os.environ[name] = value
        create_bucket(server.url)
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            throughput = bench_throughput(server, root, size, runs)
            sizes = [1 << 20, (8 if args.quick else 64) << 20]
            tool = bench_tool(server, root, sizes, runs)
    finally:
        server.stop()
    print(f"upload of {size >> 20} MiB to moto on 127.0.0.1, MiB/s: ours "
          f"{spread(throughput['ours_mib_s'])}, boto3 upload_file "
          f"{spread(throughput['theirs_mib_s'])}; time ratio ours / upload_file "
          f"{spread(throughput['ratio'])}")
    for size in sizes:
        print(f"local publish -> key holds it, {size >> 20} MiB model, s: rotator's figure "
              f"{spread(tool['lag'][size])}, polled HEAD {spread(tool['lag_polled'][size])}")
    off_total, off_rotator = tool["pss_off"]
    on_total, on_rotator = tool["pss_on"]
    print(f"idle PSS, all processes, MiB: off {off_total:.1f}, on {on_total:.1f} "
          f"(+{on_total - off_total:.1f}); rotator alone: off {off_rotator:.1f}, on "
          f"{on_rotator:.1f} (+{on_rotator - off_rotator:.1f})")


if __name__ == "__main__":
    main()
