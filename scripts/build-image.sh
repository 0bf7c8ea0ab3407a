#!/usr/bin/env bash
# `make image`: build tagger:latest with whichever container engine is installed (podman, else docker).
#
# BASE_IMAGE names the base of both stages (any Debian-like image with python3 >= 3.11 and its venv
# module). Without it, python:3.11-slim-bookworm is pulled where an image registry answers; where
# none does (as on the development machines), a Debian bookworm base is made from the distribution's
# own package mirror with mmdebstrap (about 40 s: python3 and python3-venv on a minimal Debian) and
# imported as tagger-base:bookworm.
#
# With podman, package installs inside the build use the host's package registries: its pip
# configuration (indexes, find-links, constraints, CA bundle) and the local folders they name are
# mounted into the build. TORCH_INDEX: PyTorch's CPU-only index where it answers within 5 s.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-tagger:latest}
ENGINE=${ENGINE:-$(command -v podman || command -v docker || true)}
if [ -z "$ENGINE" ]; then
    echo "build-image: neither podman nor docker is installed (apt-get install podman runc mmdebstrap)" >&2
    exit 1
fi
engine_flags=()
build_flags=()
if [ "$(basename "$ENGINE")" = podman ]; then
    # cgroups in hybrid mode: podman's default runtime (crun) refuses them, runc does not
    if command -v runc >/dev/null; then engine_flags+=(--runtime runc); fi
    # docker's image format: OCI's has no HEALTHCHECK
    build_flags+=(--format docker --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
fi

base=${BASE_IMAGE:-}
if [ -z "$base" ]; then
    if timeout 30 "$ENGINE" "${engine_flags[@]}" pull -q docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
        base=docker.io/library/python:3.11-slim-bookworm
    elif "$ENGINE" image inspect tagger-base:bookworm >/dev/null 2>&1; then
        base=localhost/tagger-base:bookworm
        echo "build-image: no image registry answers; using the local base tagger-base:bookworm" >&2
    else
        if ! command -v mmdebstrap >/dev/null; then
            echo "build-image: no image registry answers and mmdebstrap is not installed (apt-get install mmdebstrap), or pass BASE_IMAGE=..." >&2
            exit 1
        fi
        echo "build-image: no image registry answers; making a Debian bookworm base with mmdebstrap" >&2
        # no recommended packages, documentation, manual pages or translations
        # merged /usr made by mmdebstrap's own hook: the usrmerge package would bring perl (50 MB)
        hooks=()
        [ -d /usr/share/mmdebstrap/hooks/merged-usr ] && hooks=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
        mmdebstrap --quiet --variant=minbase --include=python3,python3-venv --aptopt='APT::Install-Recommends "false"' \
            "${hooks[@]}" \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
            --customize-hook='chroot "$1" apt-get clean' bookworm - \
            | "$ENGINE" import --change 'CMD ["/bin/bash"]' - tagger-base:bookworm >/dev/null
        base=localhost/tagger-base:bookworm
    fi
fi

torch_index=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
if [ -n "$torch_index" ] && ! python3 scripts/reachable.py "$torch_index/torch/" 5; then
    echo "build-image: $torch_index is not reachable; PyTorch comes from the configured index" >&2
    torch_index=
fi

if [ "$(basename "$ENGINE")" = podman ]; then
    # The host's pip configuration, merged into one file, and every local path it names.
    pipconf=$(mktemp)
    trap 'rm -f "$pipconf"' EXIT
    python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z]*\.\([a-z-]*\)='\(.*\)'$/\1 = \2/p" \
        | awk 'BEGIN { print "[global]" } !seen[$1]++' > "$pipconf"
    build_flags+=(--volume "$pipconf:/etc/pip.conf:ro,Z")
    # a file:// index's pages link to files beside its simple/ folder: its parent is mounted
    for path in $(sed -n 's/^[a-z-]* = //p' "$pipconf" | tr ' ' '\n' | sed -e 's#^file://##' -e 's#/simple/*$##' | grep '^/' | sort -u); do
        if [ -e "$path" ]; then build_flags+=(--volume "$path:$path:ro"); fi
    done
fi

started=$(date +%s)
"$ENGINE" "${engine_flags[@]}" build "${build_flags[@]}" --build-arg "BASE_IMAGE=$base" \
    --build-arg "TORCH_INDEX=$torch_index" -t "$TAG" .
echo "build-image: $TAG from $base in $(( $(date +%s) - started )) s; $("$ENGINE" image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')" >&2
