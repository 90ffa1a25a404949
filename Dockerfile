# rasa-model-rotator: supervisord (PID 1) running the inotify reader and the rotator.
FROM python:3.11-slim

# PYTHONDONTWRITEBYTECODE: nothing is written at run time (the image's user cannot write
# /app, and the root file system may be read-only); the bytecode is compiled below instead.
# PYTHONPATH: `python -m worker` and the health probes find worker/ from any working
# directory (a pod's workingDir, `docker run -w`), not only from WORKDIR.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUN_DIR=/tmp/rasa-model-rotator

WORKDIR /app

# Pure-Python wheels only: no build tools needed, no cache left behind (pip compiles their
# bytecode while installing).
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# uid 1000 in group 2000, so the original tool's `fsGroup: 2000` example keeps working.
RUN groupadd --gid 2000 rasa \
    && useradd --uid 1000 --gid 2000 --no-create-home --shell /usr/sbin/nologin rotator \
    && mkdir -p /app/models \
    && chown 1000:2000 /app/models \
    && chmod 2775 /app/models

COPY worker/ worker/
COPY conf/ conf/
# Compiled once here: without it every start and every health check (run as a user who
# cannot write the cache) compiles worker/ again, and the standard library too where the base
# image ships it without bytecode (the official image ships it compiled: nothing to do then).
RUN python -m compileall -q -j 0 -x '/(test|tests|lib2to3|idlelib|turtledemo)/' worker \
    "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

USER 1000:2000
# No VOLUME: it would leave an anonymous volume behind at every `docker rm`. Mount a host
# folder (owned by 1000:2000) or a named volume at /app/models.

# The light check (worker/surface/health.py): the verdict of `status` (exit 1 while starting, when
# supervisord does not answer, reader or rotator is not RUNNING, or the rotator is stuck or
# does not answer) without its imports. Docker 20.10 has no --start-interval and runs the
# first probe one interval after the start, so the interval is short; each probe costs a
# `docker exec` (tens of ms of CPU in dockerd, containerd and runc), so once healthy for 10 s
# (and healthy at the previous probe) a probe holds up to 55 s, checking every 5 s and
# answering at once when the verdict changes: one exec per ~56 s at idle. The timeout covers
# the hold and one slow check. `-S -c` rather than `-m`: neither site nor runpy, less CPU
# per probe (run() in worker/surface/health.py; figures in the README).
HEALTHCHECK --interval=1s --timeout=70s --start-period=30s --retries=3 \
    CMD ["python", "-S", "-c", "from worker.surface.health import run; run()", "--hold", "55"]

# Exec form: `python -m worker` checks the settings and runs supervisord in its own process,
# which is PID 1.
CMD ["python", "-m", "worker"]
