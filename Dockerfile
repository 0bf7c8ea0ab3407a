# tagger: a CPU-only image; the daemon (tagger run) by default, the viewer or a Dask worker by its command.
#   make image                           # builds tagger:latest with podman or docker (scripts/build-image.sh)
#   docker compose up -d                 # the daemon and the viewer on ./photos (compose.yaml)
#   docker run -d --name tagger --user "$(id -u):$(id -g)" -v /path/to/photos:/photos \
#       -v tagger-index:/var/lib/tagger --read-only --tmpfs /tmp tagger
# Two stages: PyTorch lives only in the build stage, which fetches weights where reachable and
# exports the ONNX models (tagger weights prepare); the final image has ONNX Runtime, the exported
# models and tagger, and `import torch` fails in it.
#
# BASE_IMAGE: any Debian-like image with python3 (3.11+) and its venv module. Where no image
# registry is reachable, scripts/build-image.sh makes one from the distribution's own mirror
# (mmdebstrap: a minimal Debian bookworm with python3 and python3-venv).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A C compiler for tagger's one extension (tagger/engine/_resample.c: a photo's model input in half the
# time, the same pixels); the build stage is thrown away.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY setup.cfg setup.py pyproject.toml README.md ./
COPY tagger ./tagger
COPY config/tagger.yaml ./config/tagger.yaml
COPY scripts/runtime_requirements.py ./scripts/runtime_requirements.py
# What runs: tagger and its runtime requirements (scripts/runtime_requirements.py: setup.cfg's, less
# PyTorch and what only exports), with the Dask worker's.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps . \
    && python3 scripts/runtime_requirements.py setup.cfg cluster > /tmp/runtime.txt \
    && /opt/venv/bin/pip install -r /tmp/runtime.txt \
    && /opt/venv/bin/python -P -c "import tagger.engine._resample, onnxruntime, av, rawpy, pillow_heif, pillow_jxl, usearch, simplejpeg, distributed" \
    && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then echo "torch got into the runtime" >&2; exit 1; fi \
    && find /opt/venv \( -name __pycache__ -o -name tests -o -name "*.pyi" \) -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3*/site-packages/pip /opt/venv/bin/pip*
# The ONNX models, made by a second environment with PyTorch that is deleted in the same step (it
# never reaches a layer). ONNX Runtime's optimised form is for the build machine's CPU: left out, it is
# made once on the user's, in the index volume (HOME/.cache). TORCH_INDEX: PyTorch's CPU-only wheels (the default index's carry gigabytes
# of CUDA); empty: the configured index (scripts/build-image.sh passes the host's registries in).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN mkdir -p /etc/tagger /opt/tagger/weights /photos \
    && sed -e 's#^  - ../photos#  - /photos#' \
           -e 's#^index: ../var/tagger.sqlite#index: /var/lib/tagger/tagger.sqlite#' \
           -e 's#^weights_dir: ../weights#weights_dir: /opt/tagger/weights#' config/tagger.yaml > /etc/tagger/tagger.yaml \
    && python3 -m venv /opt/export \
    && if [ -n "$TORCH_INDEX" ]; then /opt/export/bin/pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1; fi \
    && /opt/export/bin/pip install . \
    && (/opt/export/bin/tagger --config /etc/tagger/tagger.yaml weights fetch resnet18 \
        || echo "ResNet-18's weights are not reachable: the image uses EfficientNet-Lite0 (model.fallback)") \
    && /opt/export/bin/tagger --config /etc/tagger/tagger.yaml weights prepare \
    && rm -rf /opt/export /root/.cache /opt/tagger/weights/onnx/*.opt.onnx* \
    && /opt/venv/bin/tagger --config /etc/tagger/tagger.yaml weights

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    TAGGER_CONFIG=/etc/tagger/tagger.yaml \
    HOME=/var/lib/tagger
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tagger /opt/tagger
COPY --from=build /etc/tagger /etc/tagger
# Runs as any user (--user UID:GID, a NAS's photo owner): the index folder and /photos are open to
# all, and nothing else is written (--read-only works with a tmpfs on /tmp).
RUN groupadd --system --gid 10001 tagger \
    && useradd --system --uid 10001 --gid tagger --home-dir /var/lib/tagger --shell /usr/sbin/nologin tagger \
    && mkdir -p /var/lib/tagger /photos \
    && chmod 1777 /var/lib/tagger \
    && chown tagger:tagger /photos \
    && HOME=/tmp tagger weights
USER 10001:10001
WORKDIR /var/lib/tagger
VOLUME ["/photos", "/var/lib/tagger"]
EXPOSE 8765

# Asks the running service: the daemon's heartbeat in its status file (tagger health); the viewer's
# container overrides it with its /health (tagger health --web, compose.yaml). Alive but stuck is unhealthy.
HEALTHCHECK --interval=60s --timeout=10s --start-period=120s --retries=3 CMD ["tagger", "health"]

# tagger run handles SIGTERM itself: the current batch finishes, then it exits 0.
STOPSIGNAL SIGTERM
CMD ["tagger", "run"]
