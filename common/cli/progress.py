"""A dependency-free progress bar on stderr (redrawn in place on a terminal, sparse lines otherwise)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, label: str, *, enabled: bool = True, width: int = 30) -> None:
        self.label = label
        self.enabled = enabled
        self.width = width
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._tty = sys.stderr.isatty()

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        interval = 0.1 if self._tty else 5.0
        if done < total and now - self._last_draw < interval:
            return
        self._last_draw = now
        fraction = done / total if total else 1.0
        filled = int(self.width * fraction)
        rate = done / max(now - self.started, 1e-9)
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {rate:,.0f}/s"
        if self._tty:
            sys.stderr.write("\r" + line + ("\n" if done >= total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
