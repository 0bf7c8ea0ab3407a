"""The few exceptions library code raises; only the CLI turns them into exit codes."""
from __future__ import annotations


class TaggerError(Exception):
    """Base class: a problem the user can act on, with a message that says how."""


class ConfigError(TaggerError):
    """The config file is missing, malformed or names something that does not exist."""


class WeightsError(TaggerError):
    """Model weights are absent, corrupt or the wrong file."""


class DecodeError(TaggerError):
    """One file could not be turned into an RGB image; the reason is recorded, not fatal."""


class StoreError(TaggerError):
    """The SQLite index cannot be opened or is from a newer version of tagger."""


class StoreBusy(StoreError):
    """Another process (a `tagger retag`, say) held the index's write lock for longer than we wait."""


class DamagedIndex(StoreError):
    """The index has malformed pages or is not a database: check it, restore it, or rebuild it."""


class DiskError(StoreError):
    """The index's disk is full or failing: the write was rolled back whole, nothing half-written.

    The daemon waits and tries again; a scan stops with this message and the next one goes on.
    """


class WeightsMissingError(WeightsError):
    """No weights file for a model is installed (as opposed to a wrong or broken one)."""
