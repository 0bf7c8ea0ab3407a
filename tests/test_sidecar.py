"""Sidecars: content, naming, and atomic replacement under failures and kill -9."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tagger.engine.classify import Classifier
from tagger.engine.labels import Tag
from tagger.index.records import ImageFacts
from tagger.library.jsonsidecar import read_sidecar, sidecar_document, sidecar_path, write_sidecar

from conftest import scan_once

TAGS = [Tag(967, "n07920052", "espresso", "意式浓缩咖啡", 0.95), Tag(968, "n07930864", "cup", "茶杯", 0.01)]
FACTS = ImageFacts("ab" * 32, 1234, 400, 300)


def test_name_sits_next_to_the_image(tmp_path: Path) -> None:
    assert sidecar_path(tmp_path / "IMG_1.jpg") == tmp_path / "IMG_1.jpg.tags.json"


def test_document_holds_what_the_issue_lists(tmp_path: Path) -> None:
    image = tmp_path / "IMG_1.jpg"
    keywords = [{"keyword": "espresso", "keyword_zh": "意式浓缩咖啡", "path": "food/espresso", "score": 0.95}]
    write_sidecar(image, sidecar_document(image, FACTS, "efficientnet-lite0", "57" * 32, TAGS, keywords))
    doc = read_sidecar(image)
    assert doc["schema_version"] == 2
    assert doc["image"] == {"file": "IMG_1.jpg", "sha256": FACTS.sha256, "size": 1234, "width": 400, "height": 300}
    assert doc["model"] == {"name": "efficientnet-lite0", "weights_sha256": "57" * 32}
    assert doc["tagged_at"].endswith("Z")
    assert [t["label"] for t in doc["tags"]] == [t.label for t in TAGS]  # every raw guess, as stored
    assert doc["keywords"] == keywords and "min_score" not in doc
    assert doc["tags"][0]["label_zh"] == "意式浓缩咖啡" and doc["tags"][0]["class_id"] == 967
    assert "意式浓缩咖啡" in sidecar_path(image).read_text(encoding="utf-8")  # readable UTF-8, not \\u escapes


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "a.jpg"
    write_sidecar(image, {"version": "old"})
    before = sidecar_path(image).read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_sidecar(image, {"version": "new"})
    assert sidecar_path(image).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg.tags.json"]


WRITER = """
import sys, itertools
from pathlib import Path
from tagger.library.jsonsidecar import write_sidecar
image = Path(sys.argv[1])
print("ready", flush=True)
for i in itertools.count():
    version = "A" if i % 2 else "B"
    write_sidecar(image, {"version": version, "padding": version * 200_000})
"""


def test_kill_9_mid_write_never_leaves_a_broken_sidecar(tmp_path: Path) -> None:
    """A real crash: a writer process is SIGKILLed at random moments, 15 times."""
    image = tmp_path / "photo.jpg"
    rng = random.Random(7)
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(image)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if sidecar_path(image).exists():
            doc = json.loads(sidecar_path(image).read_text())
            assert doc["version"] in ("A", "B")
            assert doc["padding"] == doc["version"] * 200_000


@pytest.mark.parametrize("image_mode", [0o640, 0o644, 0o600])
def test_sidecar_keeps_its_images_permissions_under_a_tight_umask(tmp_path: Path, image_mode: int) -> None:
    from tagger.library.xmp import write_xmp

    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    image.chmod(image_mode)
    previous = os.umask(0o027)  # the service's UMask
    try:
        written = [write_sidecar(image, {"tags": []}), write_xmp(image, ["auto/cat"])]
    finally:
        os.umask(previous)
    for path in written:
        assert path.stat().st_mode & 0o777 == image_mode, path


@pytest.mark.parametrize("text", ["[" * 100_000, "{\"a\": " * 50_000, "not json", "\udcff"])
def test_a_hostile_sidecar_is_a_value_error_and_never_removed_as_ours(tmp_path: Path, text: str) -> None:
    """Another program's file (or a hostile one) at a sidecar's name: nested 100,000 deep it made
    json.loads raise RecursionError, which no caller expected."""
    from tagger.library.jsonsidecar import remove_own_sidecar

    image = tmp_path / "IMG_1.jpg"
    sidecar_path(image).write_text(text, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(ValueError):
        read_sidecar(image)
    assert remove_own_sidecar(image) is False and sidecar_path(image).exists()


def test_the_next_scan_removes_temporary_sidecar_files_a_killed_run_left(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], lite0: Classifier
) -> None:
    """kill -9 between write_atomic's temporary file and its rename left .NAME.tags.json.XXXX.tmp and
    .NAME.xmp.XXXX.tmp in the photo folders for good; now the next scan (or daemon start) removes them."""
    import shutil

    from tagger.config import load_config

    library = tmp_path / "library"
    (library / "a").mkdir(parents=True)
    shutil.copy(sample_jpegs[0], library / "a" / "p.jpg")
    old = [library / "a" / ".p.jpg.tags.json.k3j9_x2a.tmp", library / ".q.jpg.xmp.abcdefgh.tmp"]
    fresh = library / "a" / ".p.jpg.tags.json.zzzzzzzz.tmp"  # a writer at work right now
    theirs = library / "a" / ".p.jpg.tags.json.backup"  # not a name write_atomic makes
    for path in (*old, fresh, theirs):
        path.write_text("{")
    for path in old:
        os.utime(path, (time.time() - 3600,) * 2)
    config = load_config(write_config([library]))
    scan_once(config, lite0)
    assert not any(p.exists() for p in old)
    assert fresh.exists() and theirs.exists()
