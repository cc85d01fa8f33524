# syntax=docker/dockerfile:1
# skygrade daemon image (first version; the operations issue adds the healthcheck and defaults).
# Build:  docker build -t skygrade .
# Stage 1 builds a virtual environment with CPU-only torch from the PyTorch CPU index
# (the plain PyPI torch==2.13.0 is a multi-GB CUDA build).
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/skygrade
WORKDIR /src
RUN /opt/skygrade/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY streamer ./streamer
COPY transforms ./transforms
COPY models ./models
COPY ops ./ops
RUN /opt/skygrade/bin/pip install .

# Stage 2: runtime only, non-root. The daemon watches /data/drop and writes /data/grades;
# mount a config at /etc/skygrade/skygrade.yaml (the documented example is the default).
# Metrics bind to 127.0.0.1 unless the config says metrics.host: 0.0.0.0 (needed to scrape
# from outside the container).
FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 skygrade \
    && mkdir -p /data/drop /data/grades /etc/skygrade \
    && chown skygrade:skygrade /data/drop /data/grades
COPY --from=build /opt/skygrade /opt/skygrade
COPY ops/skygrade.example.yaml /etc/skygrade/skygrade.yaml
ENV PATH=/opt/skygrade/bin:$PATH PYTHONUNBUFFERED=1
USER skygrade
WORKDIR /home/skygrade
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["skygrade"]
CMD ["--config", "/etc/skygrade/skygrade.yaml", "watch", "--drop", "/data/drop", "--out", "/data/grades"]
