# docker build -t ghcr.io/example/batchrec:0.1.0 .     (k8s/kustomization.yaml `images:` names it)
#
# One image for every role of the nightly stack: the CronJob's driver (batchrec + kubectl), the
# DDP training pods (torchrun), and the Ray head/workers/submitter (ray). CUDA comes from the
# base image's runtime libraries plus torch's own CUDA wheel; on a CPU node it runs on CPU.
# checkov:skip=CKV_DOCKER_2: run-to-completion batch containers; Kubernetes Jobs track exit codes, not health
FROM registry.k8s.io/kubectl:v1.32.4 AS kubectl

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# Pinned: the versions batchrec is tested with. torch first, from its CUDA index.
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
 && pip install \
      "ray[data]==2.60.0" \
      pyarrow==26.0.1 \
      polars==2.1.0 \
      numpy==2.4.6 \
      pandas==3.1.1 \
      fsspec==2026.9.0 \
      s3fs==2026.9.0 \
      typer==0.29.2 \
      click==8.4.0 \
      PyYAML==6.0.3 \
      tqdm==4.70.1 \
      faiss-cpu==1.15.1

COPY --from=kubectl /bin/kubectl /usr/local/bin/kubectl

WORKDIR /opt/batchrec
COPY pyproject.toml README.md cli.py ./
COPY batchrec ./batchrec
COPY jobs ./jobs
RUN pip install --no-deps . && batchrec --help > /dev/null

# Non-root, with a UID that matches the pods' runAsUser; the root filesystem is read-only in
# the cluster, so HOME and every cache point at /tmp (an emptyDir there).
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp batchrec
USER 10001:10001
ENV HOME=/tmp XDG_CACHE_HOME=/tmp/.cache TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/inductor

ENTRYPOINT ["/usr/bin/tini", "--", "batchrec"]
CMD ["--help"]
