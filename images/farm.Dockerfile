# The farm's head/driver image (Ray + the whole project), for the Helm chart.
#
#   make images FARM_IMAGE=1        # or: images/build.sh farm (after `images/build.sh wheels` with FARM_IMAGE=1)
#
# Same base and torch arguments as images/trainer.Dockerfile; installs from the wheels in
# images/.build/farm-wheels with --no-index when they are there, else from the index. The driver never
# trains (experiments run in trainer containers/pods), but the project depends on torch, so the
# CPU wheel keeps this image small on any machine. Built from the repository root.
ARG BASE_IMAGE=autoresearch-farm/base:bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_SPEC=torch==2.13.0
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY images/trainer-requirements.txt images/.build/farm-wheel[s] /tmp/wheels/
COPY . /src
RUN set -eux; \
    python3 -m venv /opt/venv; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then src="--no-index --find-links /tmp/wheels"; else src=""; fi; \
    /opt/venv/bin/pip install $src "$TORCH_SPEC" /src; \
    /opt/venv/bin/pip uninstall -y pip 2>/dev/null || true

FROM ${BASE_IMAGE}
# gitpython needs the git binary (the research repo); from the Debian mirror base.sh configured
RUN set -eux; \
    if ! command -v git >/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends git; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    mkdir -p /farm; chmod 1777 /farm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    HOME=/farm
RUN farm --help >/dev/null && python -c "import ray, cluster, trainer; print('ray', ray.__version__)"
LABEL org.opencontainers.image.title="autoresearch-farm head" \
      org.opencontainers.image.description="the farm driver (Ray, agents, tournament, ledger, metrics)"
USER 65534:65534
WORKDIR /farm
ENTRYPOINT ["farm"]
CMD ["--help"]
