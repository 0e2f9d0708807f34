"""Progress lines for logs: what a run shows when stderr is not a terminal.

A terminal gets tqdm's bar. A log file (``nohup``, a batch job, CI) would get nothing between the
epoch lines, so there the loop writes one line to stderr at its first step and then every
``TrainingConfig.progress_seconds`` (30 s by default)::

    finetune step 120/450 (26.7%) epoch 1/3 loss 0.4123 | 10,532 tok/s | elapsed 0:01:02 | eta 0:02:51

tokens/s counts the real (unpadded) tokens since the previous line; the ETA multiplies the steps left
by the mean time of the steps this process has timed (a resumed run does not count the time before
it). The first line, at the end of the first step, has neither yet ("?").
"""
from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressLines:
    """``update(step, epoch, loss, tokens)`` after every optimizer step; writes a line when one is due.

    name: the task ("pretrain"); total_steps, epochs: the run's; every_seconds: the interval;
    stream: where lines go (default: sys.stderr at the time of writing); clock: a time function
    (tests pass their own)."""

    def __init__(self, name: str, total_steps: int, epochs: int, every_seconds: float, stream=None,
                 clock=time.perf_counter):
        self.name, self.total_steps, self.epochs, self.every = name, total_steps, epochs, every_seconds
        self.stream, self.clock = stream, clock
        self.start = self.last = None
        self.steps_run = 0
        self.tokens = 0

    def update(self, step: int, epoch: int, loss: float, tokens: int) -> str | None:
        """Count one step; -> the line written, or None when none was due."""
        now = self.clock()
        if self.start is None:
            self.start = self.last = now               # the first line comes at the first step
            due = True
        else:
            due = now - self.last >= self.every
        self.steps_run += 1
        self.tokens += tokens
        if not due:
            return None
        elapsed = now - self.start                   # the clock starts at the end of the first step
        timed = self.steps_run - 1                   # so the steps timed are the ones after it
        left = max(self.total_steps - step, 0)
        rate = f"{self.tokens / max(now - self.last, 1e-9):,.0f}" if timed else "?"
        eta = _clock(elapsed / timed * left) if timed else ("0:00:00" if left == 0 else "?")
        line = (f"{self.name} step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.1f}%) "
                f"epoch {epoch}/{self.epochs} loss {loss:.4f} | {rate} tok/s | elapsed {_clock(elapsed)} | eta {eta}")
        print(line, file=self.stream or sys.stderr, flush=True)
        self.last, self.tokens = now, 0
        return line
