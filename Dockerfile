# tagger: CPU-only image running the daemon (tagger run).
#   docker build -t tagger .
#   docker run -d --name tagger -v /path/to/photos:/photos -v tagger-index:/var/lib/tagger tagger
# As a worker of a Dask cluster (docs/guides/cluster.md; no photos, no index; the TLS files in
# a volume and the cluster: section of a config that names them):
#   docker run -d --name tagger-worker --network host -v /etc/tagger:/etc/tagger:ro tagger \
#       tagger worker tls://192.168.1.10:8786
# Weights are installed and exported to ONNX at build time (the only time tagger touches the
# network, or PyTorch); the running container needs neither.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TAGGER_CONFIG=/etc/tagger/tagger.yaml

WORKDIR /opt/tagger

# CPU-only PyTorch first (PyPI's default wheel carries CUDA, gigabytes that a CPU never uses).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

COPY setup.cfg setup.py pyproject.toml README.md ./
COPY tagger ./tagger
# A C compiler for tagger's one extension (tagger/engine/_resample.c: a photo's model input in half the
# time, the same pixels), removed again in the same layer.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install ./[cluster] \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python -P -c "import tagger.engine._resample" \
    && mkdir -p /opt/tagger/weights \
    && printf 'folders: [/photos]\nindex: /var/lib/tagger/tagger.sqlite\nweights_dir: /opt/tagger/weights\n' > /tmp/build.yaml \
    && mkdir -p /photos \
    && tagger --config /tmp/build.yaml weights fetch resnet18 \
    && tagger --config /tmp/build.yaml weights \
    && rm /tmp/build.yaml

COPY config/tagger.yaml /etc/tagger/tagger.yaml
RUN sed -i -e 's#^  - ../photos#  - /photos#' \
           -e 's#^index: ../var/tagger.sqlite#index: /var/lib/tagger/tagger.sqlite#' \
           -e 's#^weights_dir: ../weights#weights_dir: /opt/tagger/weights#' /etc/tagger/tagger.yaml \
    && groupadd --system --gid 10001 tagger \
    && useradd --system --uid 10001 --gid tagger --home-dir /var/lib/tagger --shell /usr/sbin/nologin tagger \
    && mkdir -p /var/lib/tagger \
    && chown tagger:tagger /var/lib/tagger /photos \
    && tagger weights prepare

USER 10001:10001
VOLUME ["/photos", "/var/lib/tagger"]

HEALTHCHECK --interval=60s --timeout=10s --start-period=120s --retries=3 CMD ["tagger", "health"]

# tagger run handles SIGTERM itself: the current batch finishes, then it exits 0.
STOPSIGNAL SIGTERM
CMD ["tagger", "run"]
