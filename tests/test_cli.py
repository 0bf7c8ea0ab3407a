"""The `tagger` command as a user runs it: output formats, exit codes, help for every command."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tagger.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def tagged(tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], runner: CliRunner) -> Path:
    """A library with the sample photos and one bad file, scanned; returns its config."""
    lib = tmp_path / "library"
    lib.mkdir(exist_ok=True)
    for src in sample_jpegs:
        shutil.copy(src, lib / src.name)
    (lib / "bad.jpg").write_bytes(b"GIF89a but not really")
    config = write_config()
    result = runner.invoke(cli, ["--config", str(config), "scan"])
    assert result.exit_code == 0, result.output
    return config


def test_classify_json_prints_and_writes_nothing(
    runner: CliRunner, sample_jpegs: list[Path], tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    coffee = shutil.copy(next(p for p in sample_jpegs if p.name == "coffee.jpg"), work / "coffee.jpg")
    bad = work / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = runner.invoke(cli, ["--config", str(write_config()), "classify", "--json", str(coffee), str(bad)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out[0]["path"] == str(coffee)
    assert out[0]["tags"][0]["label"] == "espresso"
    assert {"label", "score", "class_id", "label_zh", "wnid"} <= set(out[0]["tags"][0])
    assert out[1]["path"] == str(bad) and "error" in out[1] and "tags" not in out[1]
    assert sorted(p.name for p in work.iterdir()) == ["bad.png", "coffee.jpg"]
    assert not (tmp_path / "index.sqlite").exists()


def test_classify_text(runner: CliRunner, sample_jpegs: list[Path], write_config: Callable[..., Path]) -> None:
    coffee = next(p for p in sample_jpegs if p.name == "coffee.jpg")
    result = runner.invoke(cli, ["--config", str(write_config()), "classify", "--top-k", "2", str(coffee)])
    assert result.exit_code == 0
    assert result.stdout.startswith(f"{coffee}: espresso (意式浓缩咖啡) ")
    assert result.stdout.count("%") == 2


def test_scan_summary_and_exit_zero_with_bad_files(
    runner: CliRunner, tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path]
) -> None:
    lib = tmp_path / "library"
    lib.mkdir()
    shutil.copy(sample_jpegs[0], lib / "a.jpg")
    (lib / "b.jpg").write_bytes(b"")
    result = runner.invoke(cli, ["--config", str(write_config()), "scan"])
    assert result.exit_code == 0
    assert "2 images: 1 classified by efficientnet-lite0" in result.stdout and "1 failed" in result.stdout
    assert f"failed: {lib / 'b.jpg'}: empty file (0 bytes)" in result.stderr


def test_query_formats(runner: CliRunner, tagged: Path, tmp_path: Path) -> None:
    base = ["--config", str(tagged), "query"]
    paths = runner.invoke(cli, [*base, "--tag", "espresso"])
    assert paths.exit_code == 0 and paths.stdout == f"{tmp_path / 'library' / 'coffee.jpg'}\n"
    as_json = json.loads(runner.invoke(cli, [*base, "--tag", "意式浓缩咖啡", "--format", "json"]).stdout)
    assert [Path(r["path"]).name for r in as_json] == ["coffee.jpg"]
    assert as_json[0]["tags"][0]["label"] == "espresso"
    table = list(csv.DictReader(io.StringIO(runner.invoke(cli, [*base, "--tag", "n07920052", "--format", "csv"]).stdout)))
    assert table[0]["label"] == "espresso" and float(table[0]["score"]) > 0.5
    cats = runner.invoke(cli, [*base, "--tag", "猫", "--min-score", "0.1"]).stdout.split()
    assert [Path(p).name for p in cats] == ["chelsea.jpg"]
    both = runner.invoke(cli, [*base, "--tag", "espresso", "--tag", "cup", "--min-score", "0.001"]).stdout.split()
    assert [Path(p).name for p in both] == ["coffee.jpg"]
    none = runner.invoke(cli, [*base, "--tag", "espresso", "--tag", "moped"])
    assert none.exit_code == 0 and none.stdout == ""
    limited = runner.invoke(cli, [*base, "--limit", "2"]).stdout.split()
    assert len(limited) == 2
    raw = runner.invoke(cli, [*base, "class:n07920052"]).stdout.split()  # the raw guess, as the viewer links it
    assert [Path(p).name for p in raw] == ["coffee.jpg"]
    unknown = runner.invoke(cli, [*base, "class:espreso"])
    assert unknown.exit_code == 2 and "no ImageNet class matches 'espreso'" in unknown.stderr


def test_stats_and_failures(runner: CliRunner, tagged: Path) -> None:
    stats = runner.invoke(cli, ["--config", str(tagged), "stats"])
    assert stats.exit_code == 0
    assert "files tagged: 6" in stats.stdout and "files failed: 1" in stats.stdout
    assert "espresso (意式浓缩咖啡)" in stats.stdout
    failures = runner.invoke(cli, ["--config", str(tagged), "failures"])
    assert "bad.jpg: " in failures.stdout


def test_weights_lists_models_and_sources(runner: CliRunner, write_config: Callable[..., Path]) -> None:
    result = runner.invoke(cli, ["--config", str(write_config()), "weights"])
    assert result.exit_code == 0
    assert "resnet18: not installed" in result.stdout or "resnet18: installed" in result.stdout
    assert "efficientnet-lite0 (configured): installed" in result.stdout and "verified" in result.stdout
    assert "CPU: " in result.stdout and "int8 would use the u8s8" in result.stdout  # u8s8 or u8s8r7


@pytest.mark.parametrize(
    "args",
    [
        ["query", "--tag", "no-such-class-xyz"],
        ["query", "added:-99999y.."],
        ["query", "--format", "xml"],
        ["scan", "/does/not/exist"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, write_config: Callable[..., Path], args: list[str]) -> None:
    result = runner.invoke(cli, ["--config", str(write_config()), *args])
    assert result.exit_code == 2
    assert "Error" in result.stderr


def test_config_errors_exit_2_with_the_key(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("folders: []\nmodel: {top_k: lots}\n")
    result = runner.invoke(cli, ["--config", str(bad), "stats"])
    assert result.exit_code == 2
    assert "tagger: error:" in result.stderr and "'model.top_k'" in result.stderr and str(bad) in result.stderr


def test_query_before_any_scan_is_a_clear_error(runner: CliRunner, write_config: Callable[..., Path]) -> None:
    result = runner.invoke(cli, ["--config", str(write_config()), "query", "--tag", "cat"])
    assert result.exit_code == 1 and "no index yet" in result.stderr


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found += _commands(command, prefix + name + " ")
    return found


@pytest.mark.parametrize(("name", "command"), _commands(cli))
def test_every_command_has_help(runner: CliRunner, name: str, command: click.Command) -> None:
    assert command.help, f"`tagger {name}` has no help text"
    result = runner.invoke(cli, [*name.split(), "--help"])
    assert result.exit_code == 0 and "Usage:" in result.stdout


def test_python_dash_m_and_console_script_agree() -> None:
    module = subprocess.run([sys.executable, "-m", "tagger", "--version"], capture_output=True, text=True)
    script = subprocess.run([str(Path(sys.executable).parent / "tagger"), "--version"], capture_output=True, text=True)
    assert module.returncode == script.returncode == 0
    assert module.stdout == script.stdout and "tagger" in module.stdout


def test_readers_open_an_index_in_a_read_only_folder_after_the_daemon_closed_it(
    runner: CliRunner, sample_jpegs: list[Path], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """tagger-web.service's ReadOnlyPaths=: with no -wal/-shm left (the daemon closed the index
    cleanly), `stats`, `query` and the viewer could not open it ("unable to open database file")."""
    import os
    import stat

    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(sample_jpegs[0], library / "a.jpg")
    config = write_config([library], index=str(tmp_path / "state" / "index.sqlite"))
    assert runner.invoke(cli, ["--config", str(config), "scan"]).exit_code == 0
    state = tmp_path / "state"
    assert not list(state.glob("index.sqlite-*"))  # closed cleanly: no -wal, no -shm
    # root writes anywhere: drop that power, so the folder's mode counts as it does for the tagger user
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a read-only folder cannot be made")
        prefix = [setpriv, "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    state.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        tagger = str(Path(sys.executable).parent / "tagger")
        for args in (["stats"], ["query", "--format", "json"]):
            result = subprocess.run([*prefix, tagger, "--config", str(config), *args], capture_output=True, text=True,
                                    timeout=60)
            assert result.returncode == 0, result.stderr
            assert "a.jpg" in result.stdout or "1 files tagged" in result.stdout or "tagged" in result.stdout
        assert not list(state.glob("index.sqlite-*"))
    finally:
        state.chmod(0o755)


def test_an_empty_index_reads_as_none_yet_and_an_older_one_is_upgraded_on_read(
    runner: CliRunner, sample_jpegs: list[Path], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    import sqlite3

    empty = write_config(index=str(tmp_path / "empty.sqlite"))
    (tmp_path / "empty.sqlite").write_bytes(b"")
    for args in (["stats"], ["query", "cat"]):
        result = runner.invoke(cli, ["--config", str(empty), *args])
        assert result.exit_code != 0 and "no index yet" in result.output and "Traceback" not in result.output
    library = tmp_path / "library"
    library.mkdir(exist_ok=True)
    shutil.copy(next(p for p in sample_jpegs if p.stem == "coffee"), library / "coffee.jpg")
    config = write_config([library])
    assert runner.invoke(cli, ["--config", str(config), "scan"]).exit_code == 0
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:  # as the tagger before video support left it
        conn.execute("ALTER TABLE images DROP COLUMN duration")
        conn.execute("ALTER TABLE tags DROP COLUMN frame_s")
        conn.execute("ALTER TABLE files DROP COLUMN ctime_ns")
        conn.execute("ALTER TABLE files DROP COLUMN inode")
        conn.execute("DELETE FROM schema_migrations WHERE version >= 10")
    result = runner.invoke(cli, ["--config", str(config), "query", "espresso"])
    assert result.exit_code == 0 and "coffee.jpg" in result.output, result.output
