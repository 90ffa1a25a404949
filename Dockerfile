# rasa-model-rotator: supervisord (PID 1) running the inotify reader and the rotator.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUN_DIR=/tmp/rasa-model-rotator

WORKDIR /app

# Pure-Python wheels only: no build tools needed, no cache left behind.
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

USER 1000:2000
VOLUME ["/app/models"]

# Unhealthy (exit 1) when supervisord does not answer or reader or rotator is not RUNNING.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
    CMD ["python", "-m", "worker", "status"]

# Exec form: `python -m worker` checks the settings and execs supervisord, which is PID 1.
CMD ["python", "-m", "worker"]
