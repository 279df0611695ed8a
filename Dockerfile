# The batchrec image, in two variants from one file (k8s/kustomization.yaml `images:` names them):
#   docker build -t ghcr.io/example/batchrec:0.1.0 .                                      # GPU
#   docker build -t ghcr.io/example/batchrec-cpu:0.1.0 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .                     # CPU
# GPU: torch 2.13.0 from PyPI, whose Linux wheel is the CUDA 13 build and brings its CUDA
# libraries (nvidia-* wheels), so the base is a slim Python, not a CUDA image; the host's driver
# comes in through the NVIDIA container toolkit. CPU: the same pins, torch's CPU build (the Ray
# head, the submitter, the CronJob's follower, CPU-only clusters). Every other package is pinned
# by constraints.txt, the file CI and the README set-up install with: the tested versions are
# the shipped ones (tests/test_image.py resolves them for this Python and platform).
# checkov:skip=CKV_DOCKER_2: run-to-completion batch containers; Kubernetes Jobs track exit codes, not health
FROM registry.k8s.io/kubectl:v1.32.4 AS kubectl

FROM python:3.11.14-slim-bookworm
ARG TORCH_INDEX=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini: PID 1 for every entrypoint, so signals reach batchrec and orphans are reaped.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.* \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/batchrec
COPY constraints.txt ./
RUN pip install --constraint constraints.txt --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple \
      torch==2.13.0

COPY --from=kubectl /bin/kubectl /usr/local/bin/kubectl
COPY pyproject.toml README.md cli.py ./
COPY batchrec ./batchrec
COPY jobs ./jobs
RUN pip install --constraint constraints.txt ".[s3]" \
 && batchrec --help > /dev/null

# Non-root, with a UID that matches the pods' runAsUser; the root filesystem is read-only in
# the cluster, so HOME and every cache point at /tmp (an emptyDir there).
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp batchrec
USER 10001:10001
ENV HOME=/tmp XDG_CACHE_HOME=/tmp/.cache TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/inductor

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["batchrec", "--help"]
