"""What a scan did: counts a user reads at the end, and the daemon adds up since its start."""
from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class ScanSummary:
    files: int = 0
    classified: int = 0  # model runs
    reused: int = 0  # same content already in the index: a hash, no model run
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    sidecar_errors: int = 0
    refined: int = 0  # near ties decoded fully and classified again
    checked: int = 0  # INT8's close calls run again in fp32 (tagger.engine.classify.CheckedNetwork; set by the CLI)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    by_worker: dict[str, int] = field(default_factory=dict)  # images classified on each cluster worker

    @property
    def tagged(self) -> int:
        return self.classified + self.reused

    @property
    def classified_here(self) -> int:
        return self.classified - sum(self.by_worker.values())

    def add(self, other: ScanSummary) -> None:
        """Every counter of `other` added to this one's (the daemon's totals since its start)."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict):
                for key, count in theirs.items():
                    mine[key] = mine.get(key, 0) + count
            else:
                setattr(self, f.name, mine + theirs)  # numbers add, lists concatenate

    def where(self, scheduler: str) -> str:
        """The summary's line saying where the work went: per cluster worker, and here."""
        workers = ", ".join(f"{name} {count}" for name, count in sorted(self.by_worker.items()))
        listed = f" ({workers})" if workers else ""
        return f"where: {sum(self.by_worker.values())} classified on the cluster {scheduler}{listed}, {self.classified_here} here"
