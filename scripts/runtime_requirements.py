"""What a running tagger needs: setup.cfg's requirements without those that only export the models.

PyTorch (with torchvision and the EfficientNet-Lite architecture) and the onnx package are needed once,
to turn the weights into ONNX models (`tagger weights prepare`); the daemon, the viewer and a worker run
on ONNX Runtime.
The container's final stage installs this list (Dockerfile), so the one list stays setup.cfg's.

    python3 scripts/runtime_requirements.py setup.cfg [EXTRA...]   # one requirement per line
"""
from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

# onnx: only to write INT8 exports (tagger.engine.quantize), which are made with the others.
EXPORT_ONLY = frozenset({"torch", "torchvision", "efficientnet-lite-pytorch", "onnx"})


def runtime_requirements(setup_cfg: Path, extras: list[str]) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg, encoding="utf-8")
    lines = parser.get("options", "install_requires").splitlines()
    for extra in extras:
        lines += parser.get("options.extras_require", extra).splitlines()
    wanted = [line.split("#", 1)[0].strip() for line in lines]
    return [req for req in wanted if req and _name(req) not in EXPORT_ONLY]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


if __name__ == "__main__":
    print("\n".join(runtime_requirements(Path(sys.argv[1]), sys.argv[2:])))
