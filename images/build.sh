#!/usr/bin/env bash
# Build the farm's images (what `make images` runs). Needs a running Docker Engine; no registry.
#
#   images/build.sh [base|wheels|trainer|farm|all]     (default: all = base, wheels, trainer [, farm])
#
# Environment (all optional):
#   BASE_IMAGE     the image the trainer is built FROM (default: the debootstrapped
#                  autoresearch-farm/base:bookworm, built by images/base.sh when missing)
#   TORCH_SPEC     torch requirement (default torch==2.13.0: the CPU wheel on a machine without a GPU)
#   EXTRA_PIP      more packages for the trainer image (GPU: kernels)
#   KERNELS        hub kernels fetched into the image at build time (default with EXTRA_PIP=kernels: FA3's two
#                  builds upstream's train.py loads); get_kernel() loads them offline in the sandbox
#   APT_PACKAGES   Debian packages for the trainer image, from the base's mirror (GPU with the
#                  default base: "gcc libc6-dev python3-dev", which Triton needs at run time)
#   IMAGES_WHEELS  1 (default): download the wheels on the host (pip download; works offline but
#                  for the package index) and install from them with --no-index; 0: the image's
#                  pip installs from the index itself (e.g. a CUDA torch on a GPU base)
#   TRAINER_IMAGE  tag of the trainer image (default autoresearch-farm/trainer:latest)
#   FARM_IMAGE     1: also build the head/driver image (autoresearch-farm/farm:latest); default 0
#   PIP            the host's pip (default .venv/bin/pip, else pip3)
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_BASE=autoresearch-farm/base:bookworm
BASE_IMAGE="${BASE_IMAGE:-$DEFAULT_BASE}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRA_PIP="${EXTRA_PIP:-}"
# Hub kernels baked into the trainer image (offline at run time); with `kernels` in EXTRA_PIP, upstream's FA3 builds
if [[ -z "${KERNELS+x}" && " $EXTRA_PIP " == *" kernels "* ]]; then
    KERNELS="varunneal/flash-attention-3 kernels-community/flash-attn3"
fi
KERNELS="${KERNELS:-}"
IMAGES_WHEELS="${IMAGES_WHEELS:-1}"
TRAINER_IMAGE="${TRAINER_IMAGE:-autoresearch-farm/trainer:latest}"
FARM_IMAGE="${FARM_IMAGE:-0}"
FARM_IMAGE_TAG="${FARM_IMAGE_TAG:-autoresearch-farm/farm:latest}"
WHEELS=images/.build/wheels            # the trainer's (the build context's wheels/)
FARM_WHEELS=images/.build/farm-wheels  # the head image's: the whole project
if [[ -z "${PIP:-}" ]]; then
    if [[ -x .venv/bin/pip ]]; then PIP=.venv/bin/pip; else PIP=pip3; fi
fi

say() { printf '[images] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
timed() { # timed LABEL CMD...: run and report the seconds it took
    local label=$1 t0=$SECONDS
    shift
    "$@"
    say "$label: $((SECONDS - t0)) s"
}

engine() {
    command -v docker >/dev/null || die "no docker client: apt-get install -y docker.io (README, 'Docker sandbox')"
    docker info >/dev/null 2>&1 ||
        die "cannot reach the Docker Engine: start it (\`dockerd > /tmp/dockerd.log 2>&1 &\`, see README 'Docker sandbox')"
}

# The target platform of the wheels: the base image's Python (cp311 on bookworm), machine and glibc.
wheel_target() {
    docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" -c '
import platform, sys
libc, ver = platform.libc_ver()
print(f"{sys.version_info[0]}{sys.version_info[1]}", platform.machine(), ver.replace(".", "_") or "2_28")' ||
        die "cannot run python3 in $BASE_IMAGE"
}

build_base() {
    if [[ "$BASE_IMAGE" == "$DEFAULT_BASE" ]]; then
        timed "base image" images/base.sh
    elif ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "note: $BASE_IMAGE is not local; docker build will try to pull it"
    fi
}

# pip_download DIR REQUIREMENT...: exactly the wheels of REQUIREMENTS (and their dependencies) in DIR,
# for the base image's platform; wheels from an earlier, different set are pruned so that the build
# context (and docker's layer cache) depends on nothing else.
pip_download() {
    local dir=$1
    shift
    local pyver arch glibc
    read -r pyver arch glibc <<<"$(wheel_target)"
    mkdir -p "$dir"
    say "downloading wheels for cp$pyver manylinux_${glibc}_$arch into $dir: $*"
    # pip takes each --platform literally: name every manylinux tag the base's glibc runs
    local platforms=() minor
    for ((minor = ${glibc#*_}; minor >= 5; minor--)); do platforms+=(--platform "manylinux_${glibc%_*}_${minor}_$arch"); done
    platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch" --platform "manylinux1_$arch")
    local log
    log=$(mktemp)
    # only binary wheels: nothing is compiled in the image
    timed "wheels ($dir)" "$PIP" download --progress-bar off --disable-pip-version-check -d "$dir" \
        --only-binary=:all: --implementation cp --python-version "$pyver" "${platforms[@]}" "$@" 2>&1 | tee "$log" |
        grep -vE '^WARNING: Location .* is ignored|^  File was already downloaded' >&2
    local keep
    keep=$(grep -oE '(Saved|File was already downloaded) .*\.whl' "$log" | awk '{print $NF}' | xargs -rn1 basename | sort -u)
    rm -f "$log"
    [[ -n "$keep" ]] || die "no wheels were downloaded into $dir"
    local f
    for f in "$dir"/*.whl; do
        grep -qxF "$(basename "$f")" <<<"$keep" || { say "pruning $(basename "$f") (not in this set)"; rm -f "$f"; }
    done
    say "$(wc -l <<<"$keep") wheels, $(du -sh "$dir" | cut -f1), torch: $(grep '^torch-' <<<"$keep" || echo none)"
}

download_wheels() {
    if [[ "$IMAGES_WHEELS" != 1 ]]; then
        say "IMAGES_WHEELS=0: the images install from the index"
        rm -rf "$WHEELS" "$FARM_WHEELS"
        return
    fi
    local reqs=("$TORCH_SPEC" -r images/trainer-requirements.txt)
    # shellcheck disable=SC2206
    [[ -n "$EXTRA_PIP" ]] && reqs+=($EXTRA_PIP)
    pip_download "$WHEELS" "${reqs[@]}"
    if [[ "$FARM_IMAGE" == 1 ]]; then # the project's dependencies (pyproject.toml) and its build backend
        python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"] + ["wheel"]))' \
            >images/.build/farm-requirements.txt
        pip_download "$FARM_WHEELS" "$TORCH_SPEC" -r images/.build/farm-requirements.txt
    fi
}

docker_build() { # docker_build DOCKERFILE TAG [--build-arg ...]
    local file=$1 tag=$2
    shift 2
    say "docker build -f $file -t $tag $*"
    timed "docker build $tag" docker build --force-rm -f "$file" -t "$tag" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_SPEC="$TORCH_SPEC" "$@" . 2>&1 |
        grep -v 'DEPRECATED: The legacy builder\|BuildKit is currently disabled\|Install the buildx component\|https://docs.docker.com/go/buildx/\|^ *$' >&2
    say "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
}

build_trainer() {
    docker_build images/trainer.Dockerfile "$TRAINER_IMAGE" --build-arg EXTRA_PIP="$EXTRA_PIP" \
        --build-arg KERNELS="$KERNELS" \
        --build-arg APT_PACKAGES="${APT_PACKAGES:-}" \
        ${PIP_INDEX_URL:+--build-arg PIP_INDEX_URL="$PIP_INDEX_URL"} \
        ${PIP_EXTRA_INDEX_URL:+--build-arg PIP_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL"}
}

build_farm() {
    docker_build images/farm.Dockerfile "$FARM_IMAGE_TAG" \
        ${PIP_INDEX_URL:+--build-arg PIP_INDEX_URL="$PIP_INDEX_URL"} \
        ${PIP_EXTRA_INDEX_URL:+--build-arg PIP_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL"}
}

# the classic builder: works with the Debian engine and client, with or without buildx
export DOCKER_BUILDKIT=0
step=${1:-all}
engine
t0=$SECONDS
case $step in
base) build_base ;;
wheels) download_wheels ;;
trainer) build_trainer ;;
farm) build_farm ;;
all)
    build_base
    download_wheels
    build_trainer
    [[ "$FARM_IMAGE" == 1 ]] && build_farm
    ;;
*) die "unknown step $step: base, wheels, trainer, farm or all" ;;
esac
say "done in $((SECONDS - t0)) s"
