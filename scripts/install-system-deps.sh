#!/usr/bin/env bash
# Debian packages the test suite uses: systemd-analyze (unit verification), chromium with its
# chromedriver (the viewer's real-browser test), and podman with runc and mmdebstrap (the container
# image is built and run: tests/test_container.py; runc because these machines' cgroups are hybrid).
# Installs only what is missing; needs root (or sudo) the first time.
set -euo pipefail
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v exiftool >/dev/null || missing+=(libimage-exiftool-perl)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v podman >/dev/null || missing+=(podman uidmap slirp4netns containernetworking-plugins catatonit)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
