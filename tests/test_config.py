"""Config: defaults, paths, and refusals that name the key, the file and a hint."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tagger.config import DEFAULT_CONFIG, DecodeConfig, load_config
from tagger.errors import ConfigError


def test_shipped_default_config_is_valid() -> None:
    config = load_config(DEFAULT_CONFIG, require_folders=False)
    assert config.model.name == "resnet18"
    assert config.model.fallback == "efficientnet-lite0"
    assert config.model.top_k == 5
    assert config.index.is_absolute()
    assert config.folders and all(f.is_absolute() for f in config.folders)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("folders: [pics]\nindex: db/i.sqlite\n")
    config = load_config(cfg)
    assert config.folders == ((tmp_path / "pics").resolve(),)
    assert config.index == (tmp_path / "db" / "i.sqlite").resolve()


def test_env_var_picks_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("folders: []\nmodel: {top_k: 3}\n")
    monkeypatch.setenv("TAGGER_CONFIG", str(cfg))
    assert load_config().model.top_k == 3


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("folders: []\nmodle: {}\n", ["unknown key 'modle'", "did you mean 'model'"]),
        ("folders: []\nmodel: {top_kk: 3}\n", ["unknown key 'model.top_kk'", "model.top_k"]),
        ("folders: []\nmodel: {top_k: five}\n", ["'model.top_k'", "must be int", "str"]),
        ("folders: []\nmodel: {min_score: '0.5'}\n", ["'model.min_score'", "must be float"]),
        ("folders: []\nmodel: {min_score: 2}\n", ["'model.min_score'", "between 0 and 1"]),
        ("folders: []\ndecode: {refine_lead: -0.1}\n", ["'decode.refine_lead'", "between 0 (off) and 100"]),
        ("folders: []\ndecode: {refine_lead: tiny}\n", ["'decode.refine_lead'", "must be float"]),
        ("folders: []\ndecode: {refine_margin: -0.1}\n", ["'decode.refine_margin'", "between 0 and 1", "refine_lead"]),
        ("folders: []\ndecode: {refine_margin: tiny}\n", ["'decode.refine_margin'", "must be float"]),
        ("folders: []\nmodel: {name: vgg16}\n", ["'model.name'", "vgg16", "resnet18"]),
        ("folders: []\nsidecar: {enabled: 'yes'}\n", ["'sidecar.enabled'", "must be bool"]),
        ("folders: 3\n", ["'folders'", "list of folder paths"]),
        ("folders: [/does/not/exist]\n", ["'folders'", "/does/not/exist", "not an existing folder"]),
        ("folders: [\n", ["not valid YAML"]),
        ("- a\n- b\n", ["top level must be a mapping"]),
    ],
)
def test_bad_config_names_key_file_and_hint(tmp_path: Path, text: str, words: list[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    assert str(cfg) in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("decode", "lead", "says"),
    [
        ("{refine_margin: 0}", 0.0, "refinement stays off: write 'refine_lead: 0' instead"),
        ("{refine_margin: 0.005}", DecodeConfig.refine_lead, f"refinement uses 'decode.refine_lead' ({DecodeConfig.refine_lead})"),
        ("{refine_margin: 0.005, refine_lead: 0.3}", 0.3, "refinement uses 'decode.refine_lead' (0.3)"),
        ("{refine_margin: 0, refine_lead: 0.3}", 0.3, "the margin 0 is not used"),
    ],
)
def test_a_config_with_the_retired_refine_margin_still_loads_and_says_what_to_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, decode: str, lead: float, says: str
) -> None:
    """decode.refine_margin was a probability; near ties are now logit leads, so its number is not
    carried over: off stays off, on is on at decode.refine_lead, and one line names the new key."""
    cfg = tmp_path / "old.yaml"
    cfg.write_text(f"folders: []\ndecode: {decode}\n")
    with caplog.at_level("WARNING", logger="tagger.config"):
        config = load_config(cfg)
    assert config.decode.refine_lead == lead
    [line] = [r.getMessage() for r in caplog.records]
    assert str(cfg) in line and "'decode.refine_margin' is retired" in line and says in line
    caplog.clear()
    cfg.write_text("folders: []\ndecode: {refine_lead: 0.2}\n")
    assert load_config(cfg).decode.refine_lead == 0.2 and not caplog.records


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_fixture_config_round_trip(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(model={"top_k": 7}))
    assert config.model.top_k == 7
    assert config.model.name == "efficientnet-lite0"


def test_web_section_defaults_are_loopback_and_no_token(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("folders: []\n")
    web = load_config(cfg).web
    assert (web.host, web.port, web.token) == ("127.0.0.1", 8765, None)
    assert web.max_upload_mb > 0 and web.thumb_size >= 64 and web.page_size >= 1
    shipped = load_config(DEFAULT_CONFIG, require_folders=False).web
    assert shipped == web  # the commented default file says what the code does


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("web: {port: 70000}\n", ["'web.port'", "65535"]),
        ("web: {port: '8080'}\n", ["'web.port'", "must be int"]),
        ("web: {host: ''}\n", ["'web.host'", "127.0.0.1"]),
        ("web: {token: short}\n", ["'web.token'", "at least 16 characters"]),
        ("web: {token: 12345678901234567890}\n", ["'web.token'", "must be str"]),
        ("web: {max_upload_mb: 0}\n", ["'web.max_upload_mb'", "between 1"]),
        ("web: {thumb_size: 10}\n", ["'web.thumb_size'", "between 64"]),
        ("web: {page_size: 1000}\n", ["'web.page_size'", "500"]),
        ("web: {hots: 0.0.0.0}\n", ["unknown key 'web.hots'", "did you mean 'web.host'"]),
    ],
)
def test_bad_web_config_names_key_and_hint(tmp_path: Path, text: str, words: list[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("folders: []\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    for word in [str(cfg), *words]:
        assert word in str(info.value)


def test_web_token_and_address_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("folders: []\nweb: {host: 0.0.0.0, port: 0, token: a-long-enough-secret-token}\n")
    web = load_config(cfg).web
    assert (web.host, web.port, web.token) == ("0.0.0.0", 0, "a-long-enough-secret-token")


def test_rules_and_xmp_from_config(tmp_path: Path) -> None:
    rules = tmp_path / "my-rules.yaml"
    rules.write_text("rules: [{class: tabby, threshold: 0.5}]\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("folders: []\nrules: my-rules.yaml\nxmp: {enabled: true, style: replace, prefix: tags/}\n")
    config = load_config(cfg)
    assert config.rules == rules
    assert (config.xmp.enabled, config.xmp.style, config.xmp.prefix) == (True, "replace", "tags/")
    shipped = load_config(DEFAULT_CONFIG, require_folders=False)
    assert shipped.rules is None and not shipped.xmp.enabled


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("xmp: {style: sidecar}\n", ["'xmp.style'", "append", "replace"]),
        ("xmp: {prefix: /}\n", ["'xmp.prefix'"]),
        ("xmp: {enabled: yes please}\n", ["'xmp.enabled'", "bool"]),
        ("rules: missing.yaml\n", ["missing.yaml", "rules file not found"]),
        ("rules: bad-rules.yaml\n", ["bad-rules.yaml", "rule 1", "threshold"]),
    ],
)
def test_bad_rules_or_xmp_config_refuses_to_start(tmp_path: Path, text: str, words: list[str]) -> None:
    (tmp_path / "bad-rules.yaml").write_text("rules: [{class: tabby, threshold: 7}]\n")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("folders: []\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    for word in [str(cfg) if "xmp" in text else "", *words]:
        assert word in str(info.value)
