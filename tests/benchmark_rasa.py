"""Figures for Rasa in sync, against real Rasa 3.6.21 (not a test: it measures).

    .venv/bin/python -m tests.benchmark_rasa [--runs N]

1. Lag: from Rasa's close of the trained model file (its mtime: Rasa streams into the final
   path and closes it right after the last write) to each replica's `GET /status` showing the
   new model_id (both polled together every 20 ms). Light model (a few KiB), THROTTLE_DELAY
   300 ms, rolling (one replica after the other).
2. Outage: how long each replica did not answer `GET /` (0.3 s timeout, polled every 50 ms
   from the training response on) during the swap of two replicas to a heavy model (about
   17 MB, seconds to load), RASA_MAX_SWAPPING=1 (rolling) against 2
   (both at once, as the tool did before), and how long NO replica answered.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tests.test_real_rasa import Availability, Cluster
from worker.folder.archive import check_archive


def when_each_serves(servers, model_id: str, timeout: float = 180) -> list[float]:
    """Poll every server's /status together; the wall time each first served `model_id`."""
    served: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(served) < len(servers):
        assert time.monotonic() < deadline, f"not served within {timeout} s"
        for index, server in enumerate(servers):
            if index not in served and server.model_id(1) == model_id:
                served[index] = time.time()
        time.sleep(0.02)
    return [served[index] for index in range(len(servers))]


def bench_lag(cluster: Cluster, runs: int) -> dict[str, list[float]]:
    result = {"first": [], "second": [], "response": []}
    for run in range(runs):
        code, filename, _ = cluster.a.train(f"lag{run}")
        responded = time.time()
        assert code == 200, code
        closed = (cluster.models / filename).stat().st_mtime
        model_id = check_archive(cluster.models / filename).model_id
        first, second = sorted(when_each_serves([cluster.a, cluster.b], model_id))
        result["first"].append(first - closed)
        result["second"].append(second - closed)
        result["response"].append(responded - closed)
    return result


def overlap_s(first: list, second: list) -> float:
    return sum(max(0.0, min(a_end, b_end) - max(a_start, b_start))
               for a_start, a_end in first for b_start, b_end in second)


def bench_outage(cluster: Cluster, runs: int) -> dict[str, list[float]]:
    """Swap both replicas to a heavy model (then back to a light one, unmeasured)."""
    result = {"a": [], "b": [], "none answering": [], "rollout": []}
    for _ in range(runs):
        for variant in ("heavy", "light"):
            code, filename, _ = cluster.a.train(variant)
            assert code == 200, code
            # Measured from the training's response: the swaps come after the publish.
            poll = Availability({"a": cluster.a, "b": cluster.b})
            responded = time.time()
            model_id = check_archive(cluster.models / filename).model_id
            done = max(when_each_serves([cluster.a, cluster.b], model_id))
            time.sleep(0.5)
            poll.stop()
            if variant == "light":
                continue
            a, b = poll.outages("a"), poll.outages("b")
            result["a"].append(sum(end - start for start, end in a))
            result["b"].append(sum(end - start for start, end in b))
            result["none answering"].append(overlap_s(a, b))
            result["rollout"].append(done - responded)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmark_rasa")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rotator-rasa-bench-", dir=os.environ.get("BENCH_DIR")))
    started = time.monotonic()
    rows = []

    def row(name, values):
        rows.append((name, f"{statistics.median(values):.2f}",
                     f"{min(values):.2f}..{max(values):.2f}", str(len(values))))

    try:
        for slots in (1, 2):
            cluster = Cluster(root / f"slots-{slots}", RASA_MAX_SWAPPING=str(slots))
            try:
                if slots == 1:
                    lag = bench_lag(cluster, args.runs)
                    row("close of the model file -> training response", lag["response"])
                    row("close of the model file -> first replica serves it", lag["first"])
                    row("close of the model file -> second replica serves it",
                        lag["second"])
                outage = bench_outage(cluster, args.runs)
                label = "rolling (RASA_MAX_SWAPPING=1)" if slots == 1 else \
                    "simultaneous (RASA_MAX_SWAPPING=2)"
                row(f"{label}: replica A unavailable", outage["a"])
                row(f"{label}: replica B unavailable", outage["b"])
                row(f"{label}: no replica answering", outage["none answering"])
                row(f"{label}: response -> both serve the 17 MB model", outage["rollout"])
            finally:
                cluster.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    headers = ("figure (seconds)", "median", "spread", "samples")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}; "
          f"took {time.monotonic() - started:.0f} s")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
