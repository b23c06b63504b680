"""Progress of long preparation steps (teacher fine-tuning, twin training, synthesis, features).

    for batch in progress(loader, total=len(loader), desc="teacher epoch 1/3"):
        ...

    with Progress(total=n_chunks, desc="features") as bar:
        for chunk in chunks:
            ...
            bar.update(1, info=f"{hours:.1f} h")

On a terminal: a tqdm bar with rate and ETA, redrawn in place. In a file or pipe: plain lines,
no carriage returns or escape codes, at most one every `every_s` seconds or every 10 % of the
total (and a last line at the end). Silent when `KDSWEEP_QUIET=1`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")
QUIET_ENV = "KDSWEEP_QUIET"


def quiet() -> bool:
    return os.environ.get(QUIET_ENV, "").strip().lower() in ("1", "true", "yes")


def format_duration(seconds: float) -> str:
    """'45s', '4m05s', '2h03m'."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """A progress bar (terminal) or rate-limited plain lines (file/pipe); see the module doc."""

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        every_s: float = 30.0,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.every_s, self.clock = total, desc, every_s, clock
        self.stream = stream if stream is not None else sys.stdout
        self.n = 0
        self.info = ""
        self.silent = quiet()
        self.tty = _is_tty(self.stream) if tty is None else tty
        self._bar = None
        self._t0 = clock()
        self._last_t = self._t0
        self._last_n = 0
        self._closed = False
        if not self.silent and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, file=self.stream, dynamic_ncols=True, mininterval=0.5
            )

    def update(self, n: int = 1, info: str = "") -> None:
        """Count `n` more done; `info` (e.g. 'loss 0.41') is shown after the counts."""
        self.n += n
        if info:
            self.info = info
        if self.silent:
            return
        if self._bar is not None:
            if info:
                self._bar.set_postfix_str(info, refresh=False)
            self._bar.update(n)
            return
        now = self.clock()
        step = max(1, self.total // 10) if self.total else None
        due = now - self._last_t >= self.every_s
        if step is not None and self.n // step > self._last_n // step:
            due = True  # crossed a 10 % mark
        if due and not (self.total and self.n >= self.total):  # the end is close()'s line
            self._line(now)

    def _line(self, now: float) -> None:
        self._last_t, self._last_n = now, self.n
        self.stream.write(self.render(now - self._t0) + "\n")
        self.stream.flush()

    def render(self, elapsed: float) -> str:
        """One plain status line: 'features: 30/100 (30%) 1m00s elapsed, ETA ~2m20s, 3.1 h'."""
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            pct = 100 * self.n / self.total
            text = f"{head}{self.n}/{self.total} ({pct:.0f}%) {format_duration(elapsed)} elapsed"
            if 0 < self.n < self.total:
                text += f", ETA ~{format_duration(elapsed * (self.total - self.n) / self.n)}"
        else:
            text = f"{head}{self.n} done, {format_duration(elapsed)} elapsed"
        return text + (f", {self.info}" if self.info else "")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.silent:
            return
        if self._bar is not None:
            self._bar.close()
        elif self.n != self._last_n or self.n == 0:
            self._line(self.clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    every_s: float = 30.0,
    stream: IO[str] | None = None,
    **kwargs: Any,
) -> Iterator[T]:
    """Yield from `iterable`, showing progress (bar on a terminal, plain lines otherwise)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if quiet():
        yield from iterable
        return
    with Progress(total=total, desc=desc, every_s=every_s, stream=stream, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update(1)
