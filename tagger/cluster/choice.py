"""Which backend a scan uses, picked in one place (as watchdog picks its observer): here, unless
a scheduler is configured. Without one, dask is never imported."""
from __future__ import annotations

from tagger.config import ClusterConfig
from tagger.errors import ConfigError
from tagger.library.backend import BackendFactory, LocalBackend


def scan_backend(config: ClusterConfig) -> BackendFactory:
    if config.scheduler is None:
        return LocalBackend
    try:
        from tagger.cluster.backend import ClusterBackend
    except ImportError as exc:
        raise ConfigError(
            f"cluster.scheduler is set but Dask is not installed ({exc}): pip install 'tagger[cluster]'"
        ) from None
    return ClusterBackend
