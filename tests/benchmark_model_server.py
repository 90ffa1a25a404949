"""Benchmark of the model server (MODEL_SERVER_PORT) against nginx serving the same file.

    python -m tests.benchmark_model_server            # about 3 minutes; --quick: 1 run each

Starts the tool the way a user does (`python -m worker`, rolling off:
MODEL_SERVER_MAX_SWAPPING=0) on a 512 MiB model in a temporary folder (BENCH_DIR chooses
where), and Debian's nginx (`sendfile on`) on a free loopback port with a config of its own.
When nginx is not installed, its Debian package is fetched with `apt-get download` and
unpacked into the temporary folder (not installed: no system service is started).
Figures, not tests: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.helpers import (
    PROJECT_ROOT,
    RunningTool,
    free_port,
    tool_environment,
    wait_for,
    write_model,
)

MODEL_MIB = 512
CONCURRENCY = (1, 4, 16)
NOT_MODIFIED_REQUESTS = 2000


def memory_kib(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process in KiB, from smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        values[name] = int(value.split()[0])
    return values["Rss"], values["Pss"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """`pid` and its children (nginx: master and workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def request_head(host: str, port: int, path: str, etag: str | None = None) -> bytes:
    extra = f"If-None-Match: {etag}\r\n" if etag else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


def download(port: int, path: str, expected: int) -> int:
    """One whole download into a reused buffer; returns the body bytes received."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
        conn.sendall(request_head("127.0.0.1", port, path))
        buffer = bytearray(4 << 20)
        view = memoryview(buffer)
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        received = len(head.split(b"\r\n\r\n", 1)[1])
        while count := conn.recv_into(view):
            received += count
    if received != expected:
        raise RuntimeError(f"download got {received} of {expected} bytes")
    return received


def concurrent_downloads(port: int, path: str, size: int, clients: int,
                         sample_pids: list[int]) -> tuple[float, int, int]:
    """(MiB/s over all clients, peak RSS KiB, peak PSS KiB of `sample_pids` summed)."""
    peak = [0, 0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                usage = [memory_kib(p) for p in sample_pids]
            except OSError:
                usage = []
            peak[0] = max(peak[0], sum(u[0] for u in usage))
            peak[1] = max(peak[1], sum(u[1] for u in usage))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    failures: list[Exception] = []

    def one_client():
        try:
            download(port, path, size)
        except Exception as error:  # reported after the run
            failures.append(error)

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - started
    done.set()
    sampler.join()
    if failures:
        raise RuntimeError(f"{len(failures)} of {clients} downloads failed: {failures[0]}")
    return clients * size / (1 << 20) / took, peak[0], peak[1]


def not_modified_cost(port: int, path: str, etag: str, server_pids: list[int]
                      ) -> tuple[float, float, float]:
    """(median latency ms, p99 latency ms, server CPU ms per answer) of 304 answers."""
    latencies = []
    cpu_before = sum(cpu_seconds(p) for p in server_pids)
    for _ in range(NOT_MODIFIED_REQUESTS):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(request_head("127.0.0.1", port, path, etag))
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
        latencies.append(time.perf_counter() - started)
        if not answer.startswith(b"HTTP/1.1 304"):
            raise RuntimeError(f"expected 304, got {answer[:80]!r}")
    cpu = sum(cpu_seconds(p) for p in server_pids) - cpu_before
    latencies.sort()
    return (statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000,
            cpu / NOT_MODIFIED_REQUESTS * 1000)


def nginx_binary(cache: Path) -> Path:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found:
        return Path(found)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "nginx"], cwd=cache, check=True,
                   capture_output=True)
    package = next(cache.glob("nginx_*.deb"))
    subprocess.run(["dpkg", "-x", str(package), str(cache / "root")], check=True)
    return cache / "root" / "usr" / "sbin" / "nginx"


def start_nginx(binary: Path, folder: Path, latest: Path, port: int) -> subprocess.Popen:
    prefix = folder / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(f"""
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /model {{
            alias {latest};
            default_type application/gzip;
        }}
    }}
}}
""")
    process = subprocess.Popen([str(binary), "-p", str(prefix), "-c", str(config),
                                "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    wait_for(lambda: _answers(port), 30, message="nginx answering")
    return process


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def head_etag(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"HEAD /model HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    for line in answer.decode("latin-1").split("\r\n"):
        if line.lower().startswith("etag:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no ETag in {answer!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per figure")
    runs = 1 if parser.parse_args().quick else 3
    base = Path(tempfile.mkdtemp(prefix="bench-model-server-", dir=os.environ.get("BENCH_DIR")))
    tool = nginx = None
    try:
        base.chmod(0o755)  # nginx's workers run as nobody and must reach the model
        models = base / "models"
        models.mkdir(mode=0o755)
        print(f"writing a {MODEL_MIB} MiB model ...", file=sys.stderr)
        write_model(models / "20261126-101010-big-model.tar.gz", MODEL_MIB << 20, chunks=64)
        port, nginx_port = free_port(), free_port()
        tool = RunningTool(base, tool_environment(base, MODEL_SERVER_PORT=str(port),
                                                  MODEL_SERVER_BIND="127.0.0.1",
                                                  MODEL_SERVER_MAX_SWAPPING="0"))
        tool.wait_for_line("model-server INFO serving", 60)
        latest = models / "latest.tar.gz"
        tool.wait_for_line("published", 300)
        size = latest.stat().st_size
        server_pid = tool.program_pid("model-server")
        idle_rss, idle_pss = memory_kib(server_pid)
        nginx = start_nginx(nginx_binary(base / "nginx-package"), base, latest, nginx_port)
        nginx_pids = family(nginx.pid)
        # Warm the page cache, so both read the same cached file.
        download(port, "/model", size)

        rows = []
        for clients in CONCURRENCY:
            ours, theirs, our_memory = [], [], []
            for _ in range(runs):
                speed, rss, pss = concurrent_downloads(port, "/model", size, clients,
                                                       [server_pid])
                ours.append(speed)
                our_memory.append((rss, pss))
                theirs.append(concurrent_downloads(nginx_port, "/model", size, clients,
                                                   family(nginx.pid))[0])
            ratio = statistics.median(ours) / statistics.median(theirs)
            rows.append((clients, statistics.median(ours), statistics.median(theirs), ratio,
                         max(m[0] for m in our_memory), max(m[1] for m in our_memory)))

        etag = head_etag(port)
        ours_304 = not_modified_cost(port, "/model", etag, [server_pid])
        nginx_304 = not_modified_cost(nginx_port, "/model", head_etag(nginx_port), nginx_pids)

        print(f"\nmodel {size / (1 << 20):.0f} MiB on loopback, {runs} run(s) each, median; "
              f"{os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
        print("| concurrent downloads | model server MiB/s | nginx MiB/s | ratio (goal >= 0.8)"
              " | server peak RSS MiB | server peak PSS MiB |")
        print("|---|---|---|---|---|---|")
        for clients, our_speed, nginx_speed, ratio, rss, pss in rows:
            print(f"| {clients} | {our_speed:.0f} | {nginx_speed:.0f} | {ratio:.2f} | "
                  f"{rss / 1024:.1f} | {pss / 1024:.1f} |")
        print(f"\nmodel server idle before the runs: RSS {idle_rss / 1024:.1f} MiB, "
              f"PSS {idle_pss / 1024:.1f} MiB")
        print(f"one 304 ({NOT_MODIFIED_REQUESTS} sequential requests, new connection each): "
              f"model server {ours_304[0]:.2f} ms median, {ours_304[1]:.2f} ms p99, "
              f"{ours_304[2]:.3f} ms CPU; nginx {nginx_304[0]:.2f} ms median, "
              f"{nginx_304[1]:.2f} ms p99, {nginx_304[2]:.3f} ms CPU")
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(30)
        if tool is not None:
            tool.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_ROOT))
    main()
