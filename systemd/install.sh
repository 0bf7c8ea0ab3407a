#!/usr/bin/env bash
# Install tagger as a systemd service, in one command (as root):
#   sudo systemd/install.sh [PHOTOS_FOLDER]     (default /srv/photos)
# Copies this checkout to /opt/tagger, builds its .venv, creates the `tagger` user,
# writes /etc/tagger/tagger.yaml (index in /var/lib/tagger) and starts the unit.
set -euo pipefail
photos=${1:-/srv/photos}
src=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
[ -d "$photos" ] || { echo "$photos: no such folder" >&2; exit 1; }

id tagger >/dev/null 2>&1 || useradd --system --home-dir /var/lib/tagger --shell /usr/sbin/nologin tagger
if [ "$src" != /opt/tagger ]; then
  mkdir -p /opt/tagger
  cp -a "$src/." /opt/tagger/
  rm -rf /opt/tagger/.venv
fi
make -C /opt/tagger install
install -d -m 0755 /etc/tagger
if [ ! -f /etc/tagger/tagger.yaml ]; then
  sed -e "s#^  - ../photos#  - $photos#" \
      -e "s#^index: ../var/tagger.sqlite#index: /var/lib/tagger/tagger.sqlite#" \
      -e "s#^weights_dir: ../weights#weights_dir: /opt/tagger/weights#" \
      /opt/tagger/config/tagger.yaml > /etc/tagger/tagger.yaml
fi
sed -e "s#/srv/photos#$photos#g" /opt/tagger/systemd/tagger.service > /etc/systemd/system/tagger.service
setfacl -R -m u:tagger:rwX "$photos" 2>/dev/null || chown -R tagger: "$photos"
systemctl daemon-reload
systemctl enable --now tagger.service
systemctl --no-pager status tagger.service
