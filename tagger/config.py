"""YAML config -> frozen dataclasses, checked once at start-up.

A bad config refuses to start with the key, the file and a hint, because a daemon that
guesses silently tags the wrong folder for weeks.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

from tagger.errors import ConfigError
from tagger.fileio import DEFAULT_MAX_FILE_MB, MB
from tagger.tags.rules import Rules
from tagger.engine.weights import MODELS, ModelChoice
from tagger.yamlfile import read_yaml

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "tagger.yaml"
MAX_REFINE_LEAD = 100.0  # decode.refine_lead at most: every draft a near tie, in practice
TOKEN_VARIABLE = "TAGGER_WEB_TOKEN"  # set and not empty: the viewer's web.token, whatever the file says
MODEL_NAMES = tuple(MODELS)
Runtime = Literal["auto", "onnx", "torch"]  # auto: ONNX Runtime where installed
Precision = Literal["fp32", "int8"]  # int8: ONNX Runtime only
WatchMode = Literal["auto", "inotify", "polling"]  # auto: per folder, from its filesystem type


# Where an XMP sidecar goes: IMG_1.jpg.xmp (append: darktable, digiKam's default), IMG_1.xmp (replace:
# Lightroom, Capture One), or auto: the one another tool already made next to the image, else append.
XmpStyle = Literal["auto", "append", "replace"]


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"
    fallback: str | None = "efficientnet-lite0"
    top_k: int = 5
    min_score: float = 0.05
    batch_size: int = 2
    runtime: Runtime = "auto"  # auto (ONNX Runtime where installed), onnx or torch
    precision: Precision = "fp32"  # fp32, or int8 (ONNX Runtime only; close calls again in fp32; see docs/performance.md)


@dataclass(frozen=True)
class DecodeConfig:
    max_pixels: int = 100_000_000
    draft: bool = True  # JPEGs decoded at reduced scale (1/2..1/8), still above the model's input size
    # A draft-decoded image whose best logit leads the second by less than this is decoded fully
    # and classified again (0 switches it off). The lead its stored calibration implies
    # (tagger.engine.decode.calibrated_refine_lead; bench/bench_refine.py; docs/guides/decoding.md).
    refine_lead: float = 0.141
    max_file_mb: int = DEFAULT_MAX_FILE_MB  # bytes read per file at most: a bigger file is refused unread

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mb * MB

    @property
    def near_tie(self) -> float:
        """The lead under which a draft is decoded again; 0 where nothing is drafted, so nothing refined."""
        return self.refine_lead if self.draft else 0.0


@dataclass(frozen=True)
class VideoConfig:
    """Clips (MP4, MOV, M4V, 3GP, MKV, WebM): what one may cost. Frames are bounded by decode.max_pixels."""

    frames: int = 8  # keyframes sampled, spread over the clip's length
    max_seconds: float = 30.0  # wall time spent decoding one clip; it is tagged from the frames it has by then
    # Bytes on disk at most. A clip is read by seeking (a few MB whatever its size), never whole,
    # so decode.max_file_mb (bytes read into memory) does not apply: 1,000,000 MB is 1 TB.
    max_file_mb: int = 1_000_000

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mb * MB


@dataclass(frozen=True)
class SidecarConfig:
    enabled: bool = True
    # null: beside each image. A folder: sidecars (JSON and XMP) in a mirror tree under it, for a
    # library mounted read-only (tagger.library.places); relative to the config file's folder.
    folder: Path | None = None


@dataclass(frozen=True)
class XmpConfig:
    """XMP sidecars for digiKam, darktable, Lightroom and Immich (merged, never clobbered)."""

    enabled: bool = False
    style: XmpStyle = "auto"  # auto: the existing sidecar of either style, else IMG_1.jpg.xmp; append; replace
    prefix: str = "auto/"  # machine keywords live under this tag


@dataclass(frozen=True)
class WatchConfig:
    """How `tagger run` notices new files; seconds throughout."""

    mode: WatchMode = "auto"  # auto (per folder, from its filesystem type), inotify or polling
    polling_folders: tuple[str, ...] = ()  # always polled, whatever `mode` says
    poll_interval: float = 30.0
    stable_seconds: float = 1.0  # a file with no close event is tagged once unchanged this long
    open_timeout: float = 120.0  # a file left open for writing this long is tagged anyway
    delete_grace_seconds: float = 5.0
    reconcile_interval: float = 3600.0  # 0 turns the periodic reconcile off
    queue_limit: int = 100_000


@dataclass(frozen=True)
class WebConfig:
    """`tagger serve`: the viewer and JSON API."""

    host: str = "127.0.0.1"  # loopback only; another address exposes the library to that network
    port: int = 8765  # 0 picks a free port
    allowed_hosts: tuple[str, ...] = ()  # Host names answered; empty: localhost names and `host`
    token: str | None = None  # when set, every request but /health must carry it
    secure_cookie: Literal["auto", "always", "never"] = "auto"  # auto: Secure when the request is HTTPS
    max_upload_mb: int = 50  # one manual-check request, all its files together
    max_upload_pixels: int = 50_000_000  # a larger uploaded image is refused as a possible bomb
    max_upload_files: int = 20  # files in one manual-check request
    max_upload_total_pixels: int = 100_000_000  # pixels of all the images of one manual-check request
    request_timeout: int = 30  # seconds for a request's header and body to arrive, in total
    connection_limit: int = 100  # connections waiting for their client; past it the longest-waiting one is dropped
    thumb_size: int = 320  # longest side of grid thumbnails, in pixels
    page_size: int = 60  # images per grid page and API page
    threads: int = 4  # requests served at once


@dataclass(frozen=True)
class ClusterConfig:
    """`tagger scan`/`run` on a Dask cluster: this process reads, hashes and writes; workers classify."""

    scheduler: str | None = None  # tcp://HOST:PORT or tls://HOST:PORT; null: classify here
    tls_ca: str | None = None  # CA that signed the scheduler's and workers' certificates (tls:// only)
    tls_cert: str | None = None  # this machine's certificate, signed by tls_ca
    tls_key: str | None = None  # and its private key
    batch_size: int = 4  # images per task sent to a worker
    in_flight: int = 8  # tasks sent and not yet written back; bounds the coordinator's memory
    retry_seconds: float = 30.0  # while the scheduler is gone, how often to try it again
    connect_timeout: float = 10.0  # seconds to reach the scheduler before classifying here

    @property
    def uses_tls(self) -> bool:
        return bool(self.scheduler and self.scheduler.startswith("tls://"))


@dataclass(frozen=True)
class Config:
    folders: tuple[Path, ...]
    index: Path
    weights_dir: Path
    model: ModelConfig = field(default_factory=ModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    sidecar: SidecarConfig = field(default_factory=SidecarConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    web: WebConfig = field(default_factory=WebConfig)
    xmp: XmpConfig = field(default_factory=XmpConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    rules: Path | None = None  # None: the rules shipped inside the package
    source: Path | None = None
    # The rules file as load_config read it at start; kept by dataclasses.replace, so it is read once.
    loaded_rules: Rules | None = field(default=None, compare=False, repr=False)

    @cached_property
    def rule_set(self) -> Rules:
        """The rules, loaded once and handed on: a config made in code loads its file on first use."""
        return self.loaded_rules if self.loaded_rules is not None else Rules.load(self.rules)

    def model_choice(self) -> ModelChoice:
        """What the model floor needs of this config to load its classifier."""
        m = self.model
        return ModelChoice(m.name, self.weights_dir, m.fallback, m.runtime, m.precision, m.batch_size)


_SECTIONS: dict[str, type[Any]] = {
    "model": ModelConfig,
    "decode": DecodeConfig,
    "video": VideoConfig,
    "sidecar": SidecarConfig,
    "watch": WatchConfig,
    "web": WebConfig,
    "xmp": XmpConfig,
    "cluster": ClusterConfig,
}
_TOP_KEYS = ("folders", "index", "weights_dir", "rules", *_SECTIONS)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config wins, then TAGGER_CONFIG, then the shipped default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("TAGGER_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load_config(path: str | os.PathLike[str] | None = None, *, require_folders: bool = True) -> Config:
    """Read and check a config file; relative paths are relative to the file's folder."""
    source = config_path(path)
    raw = read_yaml(source, "config", "pass --config PATH or set TAGGER_CONFIG")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (folders, index, model, ...)")
    return _build(raw, source.resolve(), require_folders=require_folders)


def _build(raw: dict[str, Any], source: Path, *, require_folders: bool) -> Config:
    raw = _without_refine_margin(raw, source)
    _check_all_keys(raw, source)
    base = source.parent
    folders_raw = raw.get("folders", [])
    if isinstance(folders_raw, str):
        folders_raw = [folders_raw]
    if not isinstance(folders_raw, list) or not all(isinstance(f, str) for f in folders_raw):
        raise ConfigError(f"{source}: key 'folders' must be a list of folder paths, e.g. folders: [/srv/photos]")
    folders = tuple(_resolve(base, f) for f in folders_raw)
    if require_folders:
        for folder in folders:
            if not folder.is_dir():
                raise ConfigError(
                    f"{source}: key 'folders': {folder} is not an existing folder "
                    "(create it or remove it from the list)"
                )
    sections = {}
    for name, cls in _SECTIONS.items():
        value = raw.get(name, {})
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{name}' must be a mapping, e.g. {name}: {{...}}")
        sections[name] = _build_section(cls, value, name, source)
    model: ModelConfig = sections["model"]
    _check_decode(sections["decode"], source)
    _check_video(sections["video"], source)
    _check_model(model, source)
    decode: DecodeConfig = sections["decode"]
    watch: WatchConfig = sections["watch"]
    _check_watch(watch, source)
    watch = dataclasses.replace(watch, polling_folders=tuple(str(_resolve(base, f)) for f in watch.polling_folders))
    web: WebConfig = sections["web"]
    if os.environ.get(TOKEN_VARIABLE):  # a container's secret: not written into the config file
        web = dataclasses.replace(web, token=os.environ[TOKEN_VARIABLE])
    _check_web(web, source)
    xmp: XmpConfig = sections["xmp"]
    _check_xmp(xmp, source)
    cluster: ClusterConfig = sections["cluster"]
    tls_files = {k: getattr(cluster, k) for k in ("tls_ca", "tls_cert", "tls_key")}
    tls_paths = {k: str(_resolve(base, v)) for k, v in tls_files.items() if v is not None}
    cluster = dataclasses.replace(cluster, **tls_paths)  # type: ignore[arg-type]
    check_cluster(cluster, str(source))
    sidecar: SidecarConfig = sections["sidecar"]
    if sidecar.folder is not None:
        if not str(sidecar.folder).strip():
            raise ConfigError(f"{source}: key 'sidecar.folder' must be a folder, or null for beside each image")
        mirror = _resolve(base, str(sidecar.folder))
        _check_sidecar_folder(mirror, folders, source)
        sidecar = dataclasses.replace(sidecar, folder=mirror)
    rules = None
    if raw.get("rules") is not None:
        rules = _resolve(base, _string(raw, "rules", "", source))
    return Config(
        folders=folders,
        index=_resolve(base, _string(raw, "index", "tagger.sqlite", source)),
        weights_dir=_resolve(base, _string(raw, "weights_dir", "weights", source)),
        model=model,
        decode=decode,
        video=sections["video"],
        sidecar=sidecar,
        watch=watch,
        web=web,
        xmp=xmp,
        cluster=cluster,
        rules=rules,
        source=source,
        loaded_rules=Rules.load(rules),  # a bad rules file refuses to start, naming the file, rule and key
    )


def _check_model(model: ModelConfig, source: Path) -> None:
    choices = ", ".join(MODEL_NAMES)
    if model.name not in MODEL_NAMES:
        raise ConfigError(f"{source}: key 'model.name': unknown model {model.name!r} (choose one of {choices})")
    if model.fallback is not None and model.fallback not in MODEL_NAMES:
        raise ConfigError(
            f"{source}: key 'model.fallback': unknown model {model.fallback!r} (choose one of {choices}, or null)"
        )
    if not 1 <= model.top_k <= 1000:
        raise ConfigError(f"{source}: key 'model.top_k' must be between 1 and 1000, not {model.top_k}")
    if not 0.0 <= model.min_score <= 1.0:
        raise ConfigError(f"{source}: key 'model.min_score' must be between 0 and 1, not {model.min_score}")
    if model.runtime not in get_args(Runtime):
        raise ConfigError(f"{source}: key 'model.runtime' must be auto, onnx or torch, not {model.runtime!r}")
    if model.precision not in get_args(Precision):
        raise ConfigError(f"{source}: key 'model.precision' must be fp32 or int8, not {model.precision!r}")
    if model.precision == "int8" and model.runtime == "torch":
        raise ConfigError(
            f"{source}: key 'model.precision': int8 needs model.runtime auto or onnx (or set precision: fp32)"
        )
    if not 1 <= model.batch_size <= 256:
        raise ConfigError(f"{source}: key 'model.batch_size' must be between 1 and 256, not {model.batch_size}")


def _check_decode(decode: DecodeConfig, source: Path) -> None:
    if not 0.0 <= decode.refine_lead <= MAX_REFINE_LEAD:
        raise ConfigError(
            f"{source}: key 'decode.refine_lead' must be between 0 (off) and {MAX_REFINE_LEAD:g} (a logit lead), "
            f"not {decode.refine_lead}"
        )
    if not 1 <= decode.max_file_mb <= 100_000:
        raise ConfigError(f"{source}: key 'decode.max_file_mb' must be between 1 and 100,000 (MB), not {decode.max_file_mb}")
    if decode.max_pixels < 1:
        raise ConfigError(f"{source}: key 'decode.max_pixels' must be 1 or more, not {decode.max_pixels}")


def _check_sidecar_folder(folder: Path, folders: tuple[Path, ...], source: Path) -> None:
    """The mirror tree must not be a library folder itself (its sidecars would be scanned as a library)."""
    for library in folders:
        if folder == library or library.is_relative_to(folder):
            raise ConfigError(f"{source}: key 'sidecar.folder': {folder} holds the library folder {library}; "
                              "give a folder of tagger's own, e.g. /var/lib/tagger/sidecars")


def _check_video(video: VideoConfig, source: Path) -> None:
    if not 1 <= video.frames <= 64:
        raise ConfigError(f"{source}: key 'video.frames' must be between 1 and 64, not {video.frames}")
    if not 1 <= video.max_seconds <= 3600:
        raise ConfigError(f"{source}: key 'video.max_seconds' must be between 1 and 3600 seconds, not {video.max_seconds}")
    if not 1 <= video.max_file_mb <= 100_000_000:
        raise ConfigError(f"{source}: key 'video.max_file_mb' must be between 1 and 100,000,000 (MB), not {video.max_file_mb}")


def _check_watch(watch: WatchConfig, source: Path) -> None:
    if watch.mode not in get_args(WatchMode):
        raise ConfigError(f"{source}: key 'watch.mode' must be auto, inotify or polling, not {watch.mode!r}")
    for key in ("poll_interval", "stable_seconds", "open_timeout", "delete_grace_seconds", "reconcile_interval"):
        if getattr(watch, key) < 0:
            raise ConfigError(f"{source}: key 'watch.{key}' must be zero or more seconds")
    if watch.poll_interval < 0.1:
        raise ConfigError(f"{source}: key 'watch.poll_interval' must be at least 0.1 seconds")
    if watch.queue_limit < 100:
        raise ConfigError(f"{source}: key 'watch.queue_limit' must be at least 100")


def _check_web(web: WebConfig, source: Path) -> None:
    if not web.host.strip():
        raise ConfigError(f"{source}: key 'web.host' must be an address, e.g. 127.0.0.1 (this machine only)")
    if web.secure_cookie not in ("auto", "always", "never"):
        raise ConfigError(f"{source}: key 'web.secure_cookie' must be auto, always or never, not {web.secure_cookie!r}")
    if not all(name.strip() for name in web.allowed_hosts):
        raise ConfigError(f"{source}: key 'web.allowed_hosts' must list host names, e.g. [photos.example.org]")
    if not 1 <= web.request_timeout <= 3600:
        raise ConfigError(f"{source}: key 'web.request_timeout' must be between 1 and 3600 seconds")
    if not 0 <= web.port <= 65535:
        raise ConfigError(f"{source}: key 'web.port' must be between 0 (any free port) and 65535, not {web.port}")
    if web.token is not None and (len(web.token) < 16 or web.token != web.token.strip()):
        raise ConfigError(
            f"{source}: key 'web.token' must be at least 16 characters with no surrounding spaces "
            "(e.g. the output of: python3 -c 'import secrets; print(secrets.token_urlsafe())'), or null"
        )
    limits = {
        "max_upload_mb": (1, 1024),
        "max_upload_pixels": (1, 1_000_000_000),
        "max_upload_files": (1, 1000),
        "max_upload_total_pixels": (1, 10_000_000_000),
        "connection_limit": (8, 10_000),
        "thumb_size": (64, 1024),
        "page_size": (1, 500),
        "threads": (1, 64),
    }
    for key, (low, high) in limits.items():
        value = getattr(web, key)
        if not low <= value <= high:
            raise ConfigError(f"{source}: key 'web.{key}' must be between {low:,} and {high:,}, not {value:,}")


def _check_xmp(xmp: XmpConfig, source: Path) -> None:
    if xmp.style not in get_args(XmpStyle):
        raise ConfigError(
            f"{source}: key 'xmp.style' must be auto (the existing sidecar of either style), append (IMG_1.jpg.xmp) "
            f"or replace (IMG_1.xmp), not {xmp.style!r}"
        )
    if not xmp.prefix.strip("/ "):
        raise ConfigError(f"{source}: key 'xmp.prefix' must name a tag, e.g. 'auto/', not {xmp.prefix!r}")


SCHEDULER_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")


def check_scheduler_address(address: str, where: str) -> None:
    """tcp://HOST:PORT or tls://HOST:PORT, nothing else: a typo must not become a silent local run."""
    found = SCHEDULER_ADDRESS.fullmatch(address)
    if found is None or not 1 <= int(found.group(3)) <= 65535:
        raise ConfigError(
            f"{where}: {address!r} is not a scheduler address: write tcp://HOST:PORT or tls://HOST:PORT "
            "(the address `dask scheduler` prints, e.g. tcp://192.168.1.10:8786)"
        )


def check_cluster(cluster: ClusterConfig, source: str) -> None:
    """Also run for `--cluster ADDRESS`, which replaces `cluster.scheduler`."""
    if cluster.scheduler is not None:
        check_scheduler_address(cluster.scheduler, f"{source}: key 'cluster.scheduler'")
    tls = {key: getattr(cluster, key) for key in ("tls_ca", "tls_cert", "tls_key")}
    if cluster.uses_tls and None in tls.values():
        missing = ", ".join(f"cluster.{k}" for k, v in tls.items() if v is None)
        raise ConfigError(f"{source}: a tls:// scheduler needs {missing} (the CA, this machine's certificate and key)")
    if cluster.scheduler is not None and not cluster.uses_tls and any(tls.values()):
        raise ConfigError(
            f"{source}: keys 'cluster.tls_*' are set but the scheduler is {cluster.scheduler}: "
            "write tls://HOST:PORT to use them (tcp:// is unencrypted and unauthenticated)"
        )
    for key, value in tls.items():
        if value is not None and not os.path.isfile(value):
            raise ConfigError(f"{source}: key 'cluster.{key}': {value} is not a file")
    limits = {"batch_size": (1, 256), "in_flight": (1, 1000)}
    for key, (low, high) in limits.items():
        value = getattr(cluster, key)
        if not low <= value <= high:
            raise ConfigError(f"{source}: key 'cluster.{key}' must be between {low} and {high}, not {value}")
    if not 0.1 <= cluster.retry_seconds <= 86400:
        raise ConfigError(f"{source}: key 'cluster.retry_seconds' must be between 0.1 and 86400 seconds")
    if not 0.1 <= cluster.connect_timeout <= 600:
        raise ConfigError(f"{source}: key 'cluster.connect_timeout' must be between 0.1 and 600 seconds")


def with_scheduler(config: Config, address: str | None) -> Config:
    """`--cluster ADDRESS` replaces `cluster.scheduler`, checked like the file's own value."""
    if address is None:
        return config
    cluster = dataclasses.replace(config.cluster, scheduler=address)
    check_cluster(cluster, "--cluster")
    return dataclasses.replace(config, cluster=cluster)


def _build_section(cls: type[Any], raw: dict[str, Any], section: str, source: Path) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        expected = str(fields[key].type)
        values[key] = _coerce(value, expected, f"{section}.{key}", source)
    return cls(**values)


def _coerce(value: Any, expected: str, key: str, source: Path) -> Any:
    """Check one scalar against its annotation; ints are accepted where floats are expected."""
    if value is None and "None" in expected:
        return None
    if expected.startswith("tuple[str"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: key '{key}' must be a list of strings, not {value!r}")
        return tuple(value)
    if expected.startswith("bool"):
        ok = isinstance(value, bool)
    elif expected.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        kind = expected.split(" ")[0]
        raise ConfigError(f"{source}: key '{key}' must be {kind}, not {type(value).__name__} ({value!r})")
    return value


def _without_refine_margin(raw: dict[str, Any], source: Path) -> dict[str, Any]:
    """`decode.refine_margin` (a probability, until near ties were measured in logits) is still read:
    0 keeps refinement off, any other margin means refinement on at `decode.refine_lead`; either
    way one line says what to write instead, and a config that worked keeps working."""
    decode = raw.get("decode")
    if not isinstance(decode, dict) or "refine_margin" not in decode:
        return raw
    decode = dict(decode)
    margin = _coerce(decode.pop("refine_margin"), "float", "decode.refine_margin", source)
    if not 0.0 <= margin <= 1.0:
        raise ConfigError(f"{source}: key 'decode.refine_margin' must be between 0 and 1, not {margin} "
                          "(better: replace it with 'decode.refine_lead', docs/configuration.md)")
    if margin == 0 and "refine_lead" not in decode:
        decode["refine_lead"] = 0.0
        hint = "refinement stays off: write 'refine_lead: 0' instead"
    else:
        lead = decode.get("refine_lead", DecodeConfig.refine_lead)
        hint = f"refinement uses 'decode.refine_lead' ({lead}), a logit lead; the margin {margin:g} is not used"
    log.warning("%s: key 'decode.refine_margin' is retired (near ties are now measured in logits, not "
                "probability): %s; remove 'refine_margin' (docs/configuration.md)", source, hint)
    return {**raw, "decode": decode}


def _check_all_keys(raw: dict[str, Any], source: Path) -> None:
    """Every unknown key of the file in one message: fixing them one start at a time is slow."""
    problems = _unknown_keys(raw, _TOP_KEYS, "")
    for name, cls in _SECTIONS.items():
        if isinstance(raw.get(name), dict):
            problems += _unknown_keys(raw[name], tuple(f.name for f in dataclasses.fields(cls)), f"{name}.")
    if len(problems) == 1:
        raise ConfigError(f"{source}: unknown key {problems[0]}")
    if problems:
        raise ConfigError(f"{source}: {len(problems)} unknown keys: {'; '.join(problems)}")


def _unknown_keys(raw: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> list[str]:
    found = []
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known keys: {', '.join(allowed)})"
            found.append(f"'{prefix}{key}'{hint}")
    return found


def _string(raw: dict[str, Any], key: str, default: str, source: Path) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: key '{key}' must be a path string, not {value!r}")
    return value


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expandvars(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()
