#!/usr/bin/env bash
# Install tagger as a systemd service, in one command (as root):
#   sudo systemd/install.sh [--with-web] [--web-host ADDR] [PHOTOS_FOLDER]     (default /srv/photos)
# Copies this checkout to /opt/tagger, builds its .venv, creates the `tagger` user, writes
# /etc/tagger/tagger.yaml (index in /var/lib/tagger), exports the model to ONNX once (so the
# service never needs PyTorch) and starts tagger.service.
# --with-web also starts the viewer, tagger-web.service (read-only), with a new web.token in the
# config; --web-host ADDR (implies --with-web) serves it on ADDR (e.g. 0.0.0.0) instead of
# 127.0.0.1, and lets the private networks reach it.
# --worker ADDRESS installs a cluster worker instead (tagger-worker.service; no photos, no index):
#   sudo systemd/install.sh --worker tls://192.168.1.10:8786
# then put the cluster's TLS files in /etc/tagger and name them under cluster: in tagger.yaml.
# --venv PATH uses an environment where tagger is already installed (a package, an image) instead of
# building /opt/tagger/.venv; /opt/tagger/.venv then points to it.
set -euo pipefail
with_web=0
web_host=""
worker=""
venv=""
photos=/srv/photos
while [ $# -gt 0 ]; do
  case "$1" in
    --with-web) with_web=1 ;;
    --web-host) with_web=1; web_host=${2:?--web-host needs an address}; shift ;;
    --web-host=*) with_web=1; web_host=${1#--web-host=} ;;
    --worker) worker=${2:?--worker needs the scheduler address, e.g. tls://192.168.1.10:8786}; shift ;;
    --venv) venv=${2:?--venv needs the path of an environment with tagger installed}; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) photos=$1 ;;
  esac
  shift
done
src=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
# The environment the units run (/opt/tagger/.venv): built here, or the one --venv names.
install_venv() {
  if [ -n "$venv" ]; then
    [ -x "$venv/bin/tagger" ] || { echo "$venv/bin/tagger: no tagger installed there" >&2; exit 1; }
    rm -rf /opt/tagger/.venv && ln -s "$(cd "$venv" && pwd -P)" /opt/tagger/.venv
  else
    make -C /opt/tagger install
  fi
}
if [ -n "$worker" ]; then
  id tagger >/dev/null 2>&1 || useradd --system --home-dir /var/lib/tagger --shell /usr/sbin/nologin tagger
  if [ "$src" != /opt/tagger ]; then
    mkdir -p /opt/tagger && cp -a "$src/." /opt/tagger/ && rm -rf /opt/tagger/.venv
  fi
  install_venv
  install -d -m 0755 /etc/tagger
  [ -f /etc/tagger/tagger.yaml ] || printf 'folders: []\nweights_dir: /opt/tagger/weights\nmodel:\n  name: resnet18\n' \
    > /etc/tagger/tagger.yaml
  printf 'TAGGER_SCHEDULER=%s\n' "$worker" > /etc/tagger/worker.env
  chgrp tagger /etc/tagger/tagger.yaml /etc/tagger/worker.env
  chmod 0640 /etc/tagger/tagger.yaml /etc/tagger/worker.env
  TAGGER_CONFIG=/etc/tagger/tagger.yaml /opt/tagger/.venv/bin/tagger weights prepare
  install -m 0644 /opt/tagger/systemd/tagger-worker.service /etc/systemd/system/tagger-worker.service
  systemctl daemon-reload
  systemctl enable --now --no-block tagger-worker.service  # READY once it has joined the scheduler
  systemctl --no-pager status tagger-worker.service || true  # "activating" until it has joined
  exit 0
fi
[ -d "$photos" ] || { echo "$photos: no such folder" >&2; exit 1; }
photos=$(cd "$photos" && pwd -P)

id tagger >/dev/null 2>&1 || useradd --system --home-dir /var/lib/tagger --shell /usr/sbin/nologin tagger
if [ "$src" != /opt/tagger ]; then
  mkdir -p /opt/tagger
  cp -a "$src/." /opt/tagger/
  rm -rf /opt/tagger/.venv
fi
install_venv
install -d -m 0755 /etc/tagger
if [ ! -f /etc/tagger/tagger.yaml ]; then
  sed -e "s#^  - ../photos#  - $photos#" \
      -e "s#^index: ../var/tagger.sqlite#index: /var/lib/tagger/tagger.sqlite#" \
      -e "s#^weights_dir: ../weights#weights_dir: /opt/tagger/weights#" \
      /opt/tagger/config/tagger.yaml > /etc/tagger/tagger.yaml
fi
chgrp tagger /etc/tagger/tagger.yaml
chmod 0640 /etc/tagger/tagger.yaml   # it may hold web.token
# The one-time ONNX export, now, as root: the services find it in the read-only /opt/tagger.
TAGGER_CONFIG=/etc/tagger/tagger.yaml /opt/tagger/.venv/bin/tagger weights prepare

# Photos under /home or /root: the unit hides those trees (ProtectHome=yes) and binds the folder
# back in (read-write for the daemon, read-only for the viewer).
unit_paths() {  # UNIT_FILE BIND_SETTING
  sed -e "s#/srv/photos#$photos#g" "$1"
  case "$photos" in
    /home/*|/root/*|/run/user/*) printf '\n[Service]\nProtectHome=tmpfs\n%s=%s\n' "$2" "$photos" ;;
  esac
}
unit_paths /opt/tagger/systemd/tagger.service BindPaths > /etc/systemd/system/tagger.service
setfacl -R -m u:tagger:rwX "$photos" 2>/dev/null || chown -R tagger: "$photos"
install -d -o tagger -g tagger -m 0750 /var/lib/tagger
units=(tagger.service)

if [ "$with_web" = 1 ]; then
  if grep -q '^  token: null' /etc/tagger/tagger.yaml; then
    token=$(/opt/tagger/.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))')
    sed -i "s#^  token: null#  token: $token#" /etc/tagger/tagger.yaml
    echo "web.token written to /etc/tagger/tagger.yaml (the viewer asks for it once per browser)"
  fi
  if [ -n "$web_host" ]; then
    sed -i "s#^  host: .*#  host: $web_host#" /etc/tagger/tagger.yaml
    install -d -m 0755 /etc/systemd/system/tagger-web.service.d
    printf '[Service]\nIPAddressAllow=localhost link-local 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7\n' \
      > /etc/systemd/system/tagger-web.service.d/address.conf
    echo "serving on $web_host: list the names you browse to in web.allowed_hosts (/etc/tagger/tagger.yaml)"
  fi
  install -d -o tagger -g tagger -m 0750 /var/lib/tagger/tagger.sqlite.thumbs
  unit_paths /opt/tagger/systemd/tagger-web.service BindReadOnlyPaths > /etc/systemd/system/tagger-web.service
  units+=(tagger-web.service)
fi

systemctl daemon-reload
systemctl enable --now "${units[@]}"
systemctl --no-pager status "${units[@]}"
