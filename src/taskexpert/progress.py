"""Progress that suits where it is shown: a tqdm bar on a terminal, a few log lines elsewhere.

A bar redrawn hundreds of times is noise in a log file or a CI job, so off a terminal each long
step logs its start, about every 10% of its total, and its end with the rate (a step over in
under two seconds logs nothing). Steps nested in
another (the embedding of each pool chunk inside the pool pass) stay silent in logs: the outer
step already reports. `TASKEXPERT_QUIET=1` (the CLI's `--quiet`) silences both; being an
environment variable, it reaches worker processes too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

QUIET_ENV = "TASKEXPERT_QUIET"
logger = logging.getLogger("taskexpert")
_open_log_steps = 0  # LogProgress steps running now; inner ones stay silent
QUICK_SECONDS = 2.0  # a step over sooner logs nothing


def is_quiet() -> bool:
    """True when `TASKEXPERT_QUIET` is set to anything but '', '0', 'false' or 'no'."""
    return os.environ.get(QUIET_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) progress in this process and the processes it starts."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def on_terminal() -> bool:
    """Bars only where a person watches: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Steps:
    """The tqdm calls the package uses (iterate, update, set_postfix, close, `with`)."""

    def __init__(self, iterable: Iterable | None, total: int | None, initial: int) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.closed = total, initial, False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update()
        except GeneratorExit:  # the caller stopped early: not a failure
            self.close()
            raise
        except BaseException:
            self.close(failed=True)
            raise
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        """Ignored unless logging (see LogProgress)."""

    def close(self, failed: bool = False) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)


class NullProgress(_Steps):
    """Counts and nothing else: quiet mode, or progress turned off by the caller."""


class LogProgress(_Steps):
    """Log lines for a long step: its start, each further ~10% of the total, its end with the
    rate. A step over within QUICK_SECONDS logs nothing: the verb's own output says enough."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
    ) -> None:
        global _open_log_steps
        super().__init__(iterable, total, initial)
        self.desc, self.unit = desc or "work", unit.strip() or "it"
        self.silent = _open_log_steps > 0
        _open_log_steps += 1
        self.start, self.start_n, self.initial = time.perf_counter(), initial, initial
        self.announced, self.next_tenth, self.postfix = False, 1, ""

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _rate(self) -> str:
        elapsed = self._elapsed()
        rate = f"{(self.n - self.start_n) / elapsed:.3g} {self.unit}/s" if elapsed > 0 else "-"
        return f"{elapsed:.1f} s, {rate}"

    def _announce(self) -> bool:
        """Log the start line once the step has run QUICK_SECONDS; True once it has."""
        if not self.announced and not self.silent and self._elapsed() >= QUICK_SECONDS:
            self.announced = True
            size = f" {self.total} {self.unit}" if self.total is not None else ""
            resumed = f", resumed at {self.initial}" if self.initial else ""
            ago = f" {self._elapsed():.0f} s ago" if self._elapsed() >= 1 else ""
            logger.info(f"{self.desc}: started{size}{resumed}{ago}")
            if self.total:
                self.next_tenth = int(10 * self.start_n / self.total) + 1
        return self.announced

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total or not self._announce():
            return
        tenth = int(10 * self.n / self.total)
        if tenth >= self.next_tenth and self.n < self.total:
            self.next_tenth = tenth + 1
            logger.info(
                f"{self.desc}: {10 * tenth}% ({self.n}/{self.total} {self.unit}, {self._rate()})"
                + self.postfix
            )

    def set_postfix(self, **values: Any) -> None:
        self.postfix = "; " + ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self, failed: bool = False) -> None:
        global _open_log_steps
        if self.closed:
            return
        self.closed = True
        _open_log_steps -= 1
        # a long step that reached its end without an update in between logs its end alone
        long = not self.silent and self._elapsed() >= QUICK_SECONDS
        if self.announced or long:
            how = "stopped at" if failed else "done"
            logger.info(f"{self.desc}: {how} {self.n} {self.unit} ({self._rate()}){self.postfix}")


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    leave: bool = False,
):
    """A tqdm bar on a terminal, LogProgress elsewhere, NullProgress when quiet or not enabled."""
    if not enabled or is_quiet():
        return NullProgress(iterable, total, initial)
    if on_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    return LogProgress(iterable, total, desc, unit, initial)


def configure_logging() -> None:
    """The CLI's log setup: plain lines on stderr; third-party bars off where ours are off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.WARNING if is_quiet() else logging.INFO)
    if is_quiet() or not on_terminal():
        os.environ["TQDM_DISABLE"] = "1"  # model2vec, datasets and others draw their own bars
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
