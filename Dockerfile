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

# Stage 2: runtime only, non-root.
FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 skygrade \
    && mkdir -p /data/drop /data/grades /etc/skygrade \
    && chown skygrade:skygrade /data/drop /data/grades
COPY --from=build /opt/skygrade /opt/skygrade
ENV PATH=/opt/skygrade/bin:$PATH PYTHONUNBUFFERED=1
USER skygrade
WORKDIR /home/skygrade
ENTRYPOINT ["skygrade"]
CMD ["--help"]
