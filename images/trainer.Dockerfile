# The trainer image: what runs inside every experiment's sandbox. ONE file for CPU and GPU.
#
# Build from the repository root (the root .dockerignore keeps the context small):
#   make images                                    # CPU: debootstrapped base + the CPU torch wheel, offline
#   docker build -f images/trainer.Dockerfile -t autoresearch-farm/trainer:latest \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04-python \
#       --build-arg TORCH_SPEC=torch==2.13.0 --build-arg EXTRA_PIP=kernels \
#       --build-arg KERNELS="varunneal/flash-attention-3 kernels-community/flash-attn3" \
#       --build-arg APT_PACKAGES="gcc libc6-dev python3-dev" .                   # GPU
#
# KERNELS: hub kernels fetched at build time into /opt/hf (needs huggingface.co during the build, and `kernels`
# in EXTRA_PIP); at run time HF_HUB_OFFLINE=1 makes get_kernel() load them from there, with no network. The
# image's label farm.kernels lists them: the farm refuses to start a train.py that needs one the image lacks.
#
# BASE_IMAGE must have python3 (3.11+) with the venv module. When the build context holds
# wheels in images/.build/wheels (`images/build.sh` downloads them), everything installs from
# those wheels with --no-index (no network needed in the build); otherwise from the index
# (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL may be passed as build arguments, e.g. a CUDA torch index).
#
# Only trainer/ is copied: it imports nothing from cluster/ or agent/.
ARG BASE_IMAGE=autoresearch-farm/base:bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_SPEC=torch==2.13.0
ARG EXTRA_PIP=
ARG KERNELS=
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# requirements file always exists; the wheels dir may not (the [s] glob then matches nothing)
COPY images/trainer-requirements.txt images/.build/wheel[s] /tmp/build/
RUN set -eux; \
    python3 -m venv /opt/venv; \
    if ls /tmp/build/*.whl >/dev/null 2>&1; then \
        src="--no-index --find-links /tmp/build"; \
    else \
        src=""; \
    fi; \
    /opt/venv/bin/pip install $src "$TORCH_SPEC" -r /tmp/build/trainer-requirements.txt $EXTRA_PIP; \
    /opt/venv/bin/pip uninstall -y pip setuptools wheel 2>/dev/null || true
COPY images/prefetch_kernels.py /tmp/build/
RUN set -eux; mkdir -p /opt/hf; \
    if [ -n "$KERNELS" ]; then HF_HOME=/opt/hf /opt/venv/bin/python /tmp/build/prefetch_kernels.py $KERNELS; fi; \
    rm -rf /opt/hf/hub/.locks; chmod -R a+rX /opt/hf

FROM ${BASE_IMAGE}
# Debian packages for the run time, from the base's apt sources (needs the mirror; default none).
# GPU: "gcc libc6-dev python3-dev": Triton (torch.compile) compiles its launchers with a C compiler
# and Python's headers when a run starts.
ARG APT_PACKAGES=
RUN if [ -n "$APT_PACKAGES" ]; then \
        set -eux; apt-get update; apt-get install -y --no-install-recommends $APT_PACKAGES; \
        rm -rf /var/lib/apt/lists/*; \
    fi
# Multi-stage: the wheels never land in a layer of the final image.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/hf /opt/hf
COPY trainer/ /opt/farm/trainer/
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/opt/farm \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/opt/hf \
    HF_HUB_OFFLINE=1 \
    LANG=C.UTF-8
# CPython's pydoc_data holds the text the CPU profiles' validation shard is cut from: a candidate must not find it.
RUN rm -rf "$(python -c 'import os, pydoc_data; print(os.path.dirname(pydoc_data.__file__))')" \
    && ! python -c 'import pydoc_data.topics' 2>/dev/null
# Byte-code compiled now: the root fs is read-only at run time, so every start would recompile.
RUN python -m compileall -q /opt/farm/trainer && python -c "import torch, numpy, pyarrow, tiktoken, pydantic, requests, trainer.runner, trainer.prepare; \
print('torch', torch.__version__)"
ARG KERNELS=
LABEL farm.kernels="$KERNELS" \
      org.opencontainers.image.title="autoresearch-farm trainer" \
      org.opencontainers.image.description="runs one candidate train.py under the trusted harness (python -m trainer.runner)"
# nobody:nogroup; the sandbox also sets it, this is the default for anyone running the image by hand
USER 65534:65534
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "trainer.runner"]
