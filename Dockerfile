# syntax=docker/dockerfile:1
# The skygrade daemon: `skygrade watch` grades every exposure landing in /data/drop into
# /data/grades, with its configuration in /etc/skygrade/skygrade.yaml, /metrics and /healthz on
# port 9108. README "Operations" shows `docker run`. No Docker engine in CI: the test suite lints
# this file with hadolint and checks what the daemon relies on (tests/ops/test_dockerfile.py).
#
#   docker build -t skygrade .
#   docker run -d --name skygrade -v /srv/drop:/data/drop:ro -v /srv/grades:/data/grades \
#       -p 127.0.0.1:9108:9108 skygrade

# Stage 1: a virtual environment with CPU-only torch from the PyTorch CPU index (the plain PyPI
# torch==2.13.0 is a multi-GB CUDA build), then skygrade and its other dependencies from PyPI
# (torch==2.13.0+cpu satisfies the torch==2.13.0 pin).
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/skygrade \
    && /opt/skygrade/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamer ./streamer
COPY transforms ./transforms
COPY models ./models
COPY ops ./ops
COPY skygrade ./skygrade
RUN /opt/skygrade/bin/pip install . && /opt/skygrade/bin/pip check

# Stage 2: the runtime, the same Python base (the venv points at its interpreter), non-root.
# tini is PID 1: it passes SIGTERM on to the daemon at once (Python as PID 1 ignores it until
# the daemon installs its handler) and reaps orphaned processes. The daemon finishes the
# exposure in flight on SIGTERM within watch.shutdown_timeout_s (60 s): stop the container
# with `docker stop -t 90`.
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --uid 10001 --user-group skygrade \
    && mkdir -p /data/drop /data/grades /etc/skygrade \
    && chown skygrade:skygrade /data/grades
COPY --from=build /opt/skygrade /opt/skygrade
COPY ops/docker/skygrade.yaml /etc/skygrade/skygrade.yaml
ENV PATH=/opt/skygrade/bin:$PATH PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/skygrade
EXPOSE 9108
# /healthz answers 200 while the watcher and the grader run, 503 otherwise (ops/http.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "skygrade"]
CMD ["--config", "/etc/skygrade/skygrade.yaml", "watch", "--drop", "/data/drop", "--out", "/data/grades"]
