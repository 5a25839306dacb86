#!/usr/bin/env bash
# Build a minimal Debian bookworm + Python 3.11 base image WITHOUT any registry:
# debootstrap a rootfs from the Debian mirror apt already uses, then `docker import` it.
# For air-gapped clusters and for CI, where no image can be pulled.
#
#   images/base.sh                 # builds autoresearch-farm/base:bookworm unless it exists
#   FORCE=1 images/base.sh         # rebuild
#   BASE_IMAGE=name:tag MIRROR=http://... SUITE=bookworm images/base.sh
#
# Needs root (debootstrap), debootstrap and a running Docker Engine.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-autoresearch-farm/base:bookworm}"
SUITE="${SUITE:-bookworm}"
INCLUDE="${INCLUDE:-python3,python3-venv,ca-certificates}"

say() { printf '[base.sh] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v docker >/dev/null || die "no docker client: apt-get install -y docker.io (see README, 'Docker sandbox')"
docker info >/dev/null 2>&1 || die "cannot reach the Docker Engine: start it (\`dockerd > /tmp/dockerd.log 2>&1 &\`, see README)"

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "$BASE_IMAGE exists (FORCE=1 rebuilds it)"
    exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap"
[[ $(id -u) == 0 ]] || die "debootstrap needs root"

# The Debian mirror apt is configured with: one-line sources.list entries or deb822 .sources files.
find_mirror() {
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] && files+=("$f")
    done
    ((${#files[@]})) || return 0
    # first URI that is a Debian archive (…/debian), not debian-security, ports or third-party repos
    grep -hoE '^[[:space:]]*(deb[[:space:]]+(\[[^]]*\][[:space:]]+)?|URIs:[[:space:]]*)[^[:space:]]+' "${files[@]}" \
        | grep -oE '(https?|file)://[^[:space:]]+' \
        | grep -E '/debian/?$' | head -n1
}
MIRROR="${MIRROR:-$(find_mirror)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/farm-rootfs.XXXXXX")"
trap 'rm -rf --one-file-system "$ROOTFS"' EXIT

start=$SECONDS
say "debootstrap $SUITE from $MIRROR into $ROOTFS (minbase + $INCLUDE; ~1.5 min)"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" 2>&1 \
    | grep --line-buffered -vE '^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) ([^ ]+\.\.\.|[^ ]+ [^ ]+)$' \
    | sed -u 's/^/[base.sh]   /' >&2 # debootstrap is chatty: its phases, not every package
[[ -x "$ROOTFS/usr/bin/python3" ]] || die "debootstrap finished but $ROOTFS has no python3"

# Slim the rootfs: package lists, apt caches, docs and locales are not needed to run Python.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} + 2>/dev/null || true
# Point apt at the same mirror for anyone extending the image.
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOTFS/etc/apt/sources.list"

say "importing the rootfs ($(du -sh --one-file-system "$ROOTFS" | cut -f1)) as $BASE_IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $SUITE minbase + $INCLUDE from $MIRROR" \
    - "$BASE_IMAGE" >/dev/null
docker run --rm --network none "$BASE_IMAGE" python3 -c 'import sys, venv, ssl; print("python", sys.version.split()[0])' >&2 \
    || die "the imported image cannot run python3"
say "built $BASE_IMAGE in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
