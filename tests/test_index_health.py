"""The index knows it is itself: a WAL of another index is refused before anything is written, a
damaged index is one line (never a traceback) in every command and the viewer, and `tagger index
check` and `tagger index rebuild` (from the sidecars, no model run) put it right."""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import CountingClassifier
from test_web import make_app

from tagger.cli import cli
from tagger.config import load_config
from tagger.index import Index
from tagger.index.identity import (
    ADVICE,
    companion_path,
    damage_path,
    stored_id,
    wal_path,
)

PAGE = 4096


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def scanned(tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], runner: CliRunner) -> Path:
    """A library of the sample photos, scanned by `tagger scan`, with one keyword of the user's own; its config."""
    library = tmp_path / "library"
    library.mkdir(exist_ok=True)
    for src in sample_jpegs:
        shutil.copy(src, library / src.name)
    config = write_config()
    assert invoke(runner, config, "scan").exit_code == 0
    photo = library / sample_jpegs[0].name
    assert invoke(runner, config, "tag", "add", str(photo), "grandma").exit_code == 0
    return config


def invoke(runner: CliRunner, config: Path, *args: str) -> Result:
    return runner.invoke(cli, ["--config", str(config), *args])


def index_of(config: Path) -> Path:
    return load_config(config, require_folders=False).index


def sidecar_stamps(library: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in library.iterdir() if p.name.endswith(".tags.json")}


def one_line_error(result: Result) -> str:
    """The error a command ended with: exit 1, one line, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.startswith("tagger: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def damage(index: Path, first: int, last: int | None = None) -> None:
    """Garbage over pages first..last (1-based; the header page 1 is kept)."""
    pages = index.stat().st_size // PAGE
    with open(index, "r+b") as fh:
        for page in range(first, min(last or pages, pages) + 1):
            fh.seek((page - 1) * PAGE)
            fh.write(bytes((page * 37 + i) % 251 for i in range(PAGE)))


# -- identity --------------------------------------------------------------------------------


@pytest.mark.parametrize("companion", [True, False], ids=["with-id-file", "id-file-missing"])
def test_a_wal_of_another_index_is_refused_before_anything_is_written(
    runner: CliRunner, scanned: Path, tmp_path: Path, companion: bool
) -> None:
    index = index_of(scanned)
    assert companion_path(index).exists() and not wal_path(index).exists()
    if not companion:
        companion_path(index).unlink()
    other = Index.open(tmp_path / "other" / "index.sqlite")  # another library's index, its frames still in its WAL
    try:
        other.conn.execute("PRAGMA wal_autocheckpoint=0")
        with other.transaction():
            other.save_failure("/elsewhere/photo.jpg", None, 1, 1, "another library")
        shutil.copy(wal_path(other.path), wal_path(index))
    finally:
        other.close()
    main = index.read_bytes()
    stamps = sidecar_stamps(tmp_path / "library")

    for args in (["scan"], ["retag", "--all"], ["stats"], ["query", "tag:cat"]):
        line = one_line_error(invoke(runner, scanned, *args))
        assert str(wal_path(index)) in line
        assert f"move {wal_path(index).name} aside (it belongs to another index) or restore both files together" in line
    assert index.read_bytes() == main
    assert sidecar_stamps(tmp_path / "library") == stamps

    assert invoke(runner, scanned, "index", "check").exit_code == 1
    wal_path(index).unlink()  # what the message says to do
    Path(f"{index}-shm").unlink(missing_ok=True)
    assert invoke(runner, scanned, "stats").exit_code == 0
    assert invoke(runner, scanned, "index", "check").exit_code == 0


def test_the_id_file_is_written_again_and_another_index_in_its_place_is_refused(
    runner: CliRunner, scanned: Path, tmp_path: Path
) -> None:
    index = index_of(scanned)
    with Index.open(index, readonly=True) as store:
        own = stored_id(store.conn)
    assert own is not None and companion_path(index).read_text().strip() == own

    companion_path(index).unlink()  # lost: written again from the database by the next writer
    assert invoke(runner, scanned, "retag").exit_code == 0
    assert companion_path(index).read_text().strip() == own

    moved = tmp_path / "moved"  # the index and its id file copied together to a new place: still itself
    moved.mkdir()
    for name in (index, companion_path(index)):
        shutil.copy(name, moved / name.name)
    with Index.open(moved / index.name) as store:
        assert stored_id(store.conn) == own

    Index.open(tmp_path / "another.sqlite").close()  # another index put in this one's place
    main = (tmp_path / "another.sqlite").read_bytes()
    shutil.copy(tmp_path / "another.sqlite", index)
    line = one_line_error(invoke(runner, scanned, "scan"))
    assert "this index is not the one tagger wrote here" in line and str(companion_path(index)) in line
    assert index.read_bytes() == main


# -- damage ----------------------------------------------------------------------------------


def test_a_damaged_index_is_one_line_in_every_command(runner: CliRunner, scanned: Path, tmp_path: Path) -> None:
    index = index_of(scanned)
    damage(index, 2)  # every page but the header
    for args in (["scan"], ["retag", "--all"], ["failures"], ["stats"], ["query", "tag:cat"], ["similar", "x.jpg"],
                 ["duplicates"], ["learned"]):
        damage_path(index).unlink(missing_ok=True)  # each command meets the damage itself
        line = one_line_error(invoke(runner, scanned, *args))
        assert str(index) in line and "damaged" in line and ADVICE in line, (args, line)


def test_damage_found_by_one_command_is_said_by_the_readers_and_the_viewer(
    runner: CliRunner, scanned: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = index_of(scanned)
    config = load_config(scanned)
    app = make_app(config, None)
    client = app.test_client()
    try:
        assert client.get("/").status_code == 200  # this thread's connection is open before the damage
        damage(index, 4, 6)
        assert invoke(runner, scanned, "index", "check").exit_code == 1  # notes the damage
        assert damage_path(index).exists()
        for args in (["stats"], ["query", "tag:cat"], ["failures"]):
            assert ADVICE in one_line_error(invoke(runner, scanned, *args))
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            page = client.get("/")
            api = client.get("/api/images?q=cat")
        assert page.status_code == 503 and "tagger index rebuild" in page.get_data(as_text=True)
        assert api.status_code == 503
        assert not any(record.exc_info for record in caplog.records)
    finally:
        app.extensions["tagger"].close()


def test_the_viewer_answers_503_for_a_malformed_page_met_in_a_request(
    scanned: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = index_of(scanned)
    damage(index, 2)
    app = make_app(load_config(scanned), None)
    try:
        with caplog.at_level(logging.ERROR):
            page = app.test_client().get("/")
        assert page.status_code == 503
        assert "tagger index rebuild" in page.get_data(as_text=True)
        assert not any(record.exc_info for record in caplog.records)
    finally:
        app.extensions["tagger"].close()


# -- check and rebuild -----------------------------------------------------------------------


def test_check_then_rebuild_from_the_sidecars_without_a_model_run(
    runner: CliRunner, scanned: Path, tmp_path: Path, counting: CountingClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = index_of(scanned)
    before = {tag: invoke(runner, scanned, "query", tag).stdout for tag in ("tag:cat", "grandma", "tag:animal")}
    assert before["grandma"].strip() and before["tag:animal"].strip()
    healthy = invoke(runner, scanned, "index", "check")
    assert healthy.exit_code == 0 and "quick_check: ok" in healthy.stdout

    photo = sorted((tmp_path / "library").glob("*.jpg"))[2]
    shown = invoke(runner, scanned, "tag", "show", str(photo)).stdout
    removed = shown.splitlines()[0].split()[2].rsplit("/", 1)[-1]  # "model  93.1%  animal/cat  (...)"
    assert invoke(runner, scanned, "tag", "remove", str(photo), removed).exit_code == 0
    before_show = invoke(runner, scanned, "tag", "show", str(photo)).stdout
    assert f"removed by user: {removed}" in before_show
    before = {tag: invoke(runner, scanned, "query", tag).stdout for tag in before}

    with Index.open(index, readonly=True) as store:  # the pages the sidecars can give back, in the middle of the file
        roots = [r[0] for r in store.conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE tbl_name IN ('files', 'tags', 'keywords', 'keyword_terms') "
            "AND rootpage > 0")]
    for root in roots:
        damage(index, root, root)
    check = invoke(runner, scanned, "index", "check")
    assert check.exit_code == 1 and "problem: " in check.stdout and "tagger index rebuild" in check.stdout

    (tmp_path / "library" / "new.jpg").write_bytes((tmp_path / "library" / sorted(
        p.name for p in (tmp_path / "library").glob("*.jpg"))[1]).read_bytes() + b"\0")  # no sidecar yet
    rebuilt = invoke(runner, scanned, "index", "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "1 files need `tagger scan` to be classified again" in rebuilt.stdout
    assert "new.jpg: no sidecar" in rebuilt.stderr
    aside = [p for p in index.parent.iterdir() if p.name.startswith(f"{index.name}.damaged-")]
    assert len(aside) == 1 and not damage_path(index).exists()
    assert invoke(runner, scanned, "index", "check").exit_code == 0

    after = {tag: invoke(runner, scanned, "query", tag).stdout for tag in before}
    assert after == before  # the same answers, the user's own keyword too
    assert "corrections: 2 rows kept" in rebuilt.stdout and "embeddings: 6 rows kept" in rebuilt.stdout

    from tagger.engine import classify

    monkeypatch.setattr(classify.Classifier, "from_settings", classmethod(lambda cls, *a, **k: counting))
    scan = invoke(runner, scanned, "scan")
    assert scan.exit_code == 0, scan.output
    assert counting.images == 1  # new.jpg only: every restored file is unchanged, its embedding kept
    assert "1 classified" in scan.stdout and "embeddings:" not in scan.stdout
    assert invoke(runner, scanned, "tag", "show", str(photo)).stdout == before_show  # removal kept (from the old index)


def test_rebuild_refuses_while_the_daemon_or_a_scan_holds_the_index(runner: CliRunner, scanned: Path) -> None:
    from tagger.library.lock import index_lock

    with index_lock(index_of(scanned), "run"):
        result = invoke(runner, scanned, "index", "rebuild")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not any(p.name.startswith("index.sqlite.damaged-") for p in index_of(scanned).parent.iterdir())


def test_an_index_of_an_older_tagger_gets_an_id_and_keeps_working(runner: CliRunner, scanned: Path) -> None:
    index = index_of(scanned)
    with Index.open(index) as store, store.transaction():
        store.conn.execute("DELETE FROM settings WHERE key = 'index_id'")
    companion_path(index).unlink()
    assert invoke(runner, scanned, "stats").exit_code == 0  # a reader writes nothing
    assert not companion_path(index).exists()
    assert invoke(runner, scanned, "retag").exit_code == 0
    with Index.open(index, readonly=True) as store:
        assert stored_id(store.conn) == companion_path(index).read_text().strip()
    assert os.path.getsize(index) > 0
