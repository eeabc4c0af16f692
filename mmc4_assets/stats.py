"""Step statistics: every stage counts what it keeps and why it drops the rest."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class StepStats:
    """Kept count, drop counts by stable reason label, and named timings."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)

    def keep(self, n: int = 1) -> None:
        self.kept += n

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def seen(self) -> int:
        return self.kept + self.total_dropped

    def timer(self, name: str) -> _Timer:
        return _Timer(self, name)

    def as_dict(self) -> dict[str, int]:
        return {f"dropped_{k}": v for k, v in sorted(self.dropped.items())}

    def as_markdown(self, what: str = "rows") -> str:
        lines = [f"| reason | {what} |", "|---|---:|", f"| kept | {self.kept} |"]
        lines += [f"| {reason} | {n} |" for reason, n in self.dropped.most_common()]
        return "\n".join(lines)


class _Timer:
    def __init__(self, stats: StepStats, name: str):
        self.stats, self.name = stats, name

    def __enter__(self) -> _Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self.start
        self.stats.timings[self.name] = self.stats.timings.get(self.name, 0.0) + elapsed
