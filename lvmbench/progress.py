"""Progress of long jobs: a bar on a terminal, a line every few seconds in a log.

A pipeline job writes to a log file, where a progress bar is one unreadable line of
carriage returns. So with no terminal, :class:`Progress` writes a plain line every
``$LVMBENCH_PROGRESS_EVERY`` seconds (default 15), and one at the end:

    [lvmbench] train mnist/.../seed0: step 1200/5000 (24%), bound -98.31, 41.3 step/s, ETA 0:01:32

On a terminal it is a tqdm bar; with ``enabled=False`` (``--quiet``) it says nothing.
:func:`track` wraps a loop in one (the measurements' batches, draws and steps).
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

from tqdm.auto import tqdm


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("LVMBENCH_PROGRESS_EVERY", "15")))
    except ValueError:
        return 15.0


class Progress:
    """Progress through ``total`` units of work (steps, batches, draws) named ``desc``."""

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.postfix: dict[str, str] = {}
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, leave=False)
        self.start, self.start_n = time.perf_counter(), initial
        self.every = _interval()
        self.last = self.start

    def update(self, n: int = 1, **postfix) -> None:
        """``n`` more units done; ``postfix`` (e.g. bound=-98.3) is shown with the next line."""
        self.n += n
        if postfix:
            self.postfix = {k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in postfix.items()}
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(self.postfix)
        elif self.enabled and time.perf_counter() - self.last >= self.every:
            self.line()

    def line(self) -> None:
        """Write the progress line now."""
        now = time.perf_counter()
        self.last = now
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        left = (self.total - self.n) / rate if rate > 0 else float("inf")
        eta = str(datetime.timedelta(seconds=round(left))) if left != float("inf") else "?"
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        pct = 100 * self.n / self.total if self.total else 100.0
        print(f"[lvmbench] {self.desc}: {self.unit} {self.n}/{self.total} ({pct:.0f}%){extra}, "
              f"{rate:.1f} {self.unit}/s, ETA {eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.line()


T = TypeVar("T")


def track(items: Iterable[T], total: int, desc: str, unit: str = "step", enabled: bool = True) -> Iterator[T]:
    """``items`` one by one, with a :class:`Progress` of ``total`` units advanced by each."""
    progress = Progress(total, desc, unit=unit, enabled=enabled)
    try:
        for item in items:
            yield item
            progress.update()
    finally:
        progress.close()
