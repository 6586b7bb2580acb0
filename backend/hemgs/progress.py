"""Progress of the long commands on stderr (the `hemgs` command line).

The pipeline reports through two kinds of callback:
- a stage callback `(stage, step, total, info)` (hemgs.fit.Progress): anchor mode's fit, and the
  `progress=` of the coders and decoders (hemgs.pipeline.compress_model, encode_direct,
  decode_file, ...; `stages=` where `progress` already means the next kind:
  hemgs.pipeline.compress_direct and render_views, hemgs.direct.fit_direct);
- a count callback `(done, total)`: direct mode's fit iterations, render_views' views.

`Reporter` turns both into, per stage: a tqdm bar (name, count, rate, ETA) when the stream is a
terminal, else exactly one line when the stage ends, e.g.

    hemgs: warm start: 200 steps in 12.3 s (loss 0.0123)

Nothing goes to stdout. The worker (hemgs.worker) turns the same callbacks into JSON progress
events for the add-on instead, with these stage names.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, TextIO

# stage: (the name shown, the unit counted; None: a stage reported as one step)
STAGES: dict[str, tuple[str, str | None]] = {
    "teacher": ("rendering the source", "view"),  # anchor mode's fit (hemgs.fit)
    "warm": ("warm start", "step"),
    "render": ("training (render space)", "step"),
    "refine": ("entropy refinement", "step"),  # anchor mode's fit, after training (hemgs.entropy.refine)
    "importance": ("importance renders", "view"),  # direct mode's fit (hemgs.direct.fit), anchor mode's too
    "fit": ("fitting (direct mode)", "iteration"),
    "balance": ("stage balance", "render"),  # direct mode's encoder (hemgs.direct.codec, balance)
    "code": ("coding", "stage"),  # direct: one step per coded stage
    "encode": ("encoding", None),  # anchor mode's encoder, one step
    "decode": ("decoding", "stage"),  # direct: per coded stage; anchor: one step
    "bake": ("baking", None),  # pipeline.decompress: the decoded file as 3DGS Gaussians
    "write": ("writing", None),
    "eval_source": ("evaluation renders (source)", "view"),  # service.evaluate
    "eval_other": ("evaluation renders (other file)", "view"),
}
STAGE_NAMES = {stage: name for stage, (name, _) in STAGES.items()}

StageCallback = Callable[[str, int, int, dict], None]


def step_stage(progress: StageCallback | None, stage: str):
    """A context manager reporting one step of work as `stage` (0 of 1, then 1 of 1 on success)."""
    if progress is None:
        return contextlib.nullcontext()
    return _one_step(progress, stage)


@contextlib.contextmanager
def _one_step(progress: StageCallback, stage: str):
    progress(stage, 0, 1, {})
    yield
    progress(stage, 1, 1, {})


class Reporter:
    """A stage callback `(stage, step, total, info)` that shows progress on `stream` (default
    stderr): a bar per stage on a terminal, else one line per stage as it ends. A stage ends when
    its step reaches its total, when another stage (or the same one from a lower step) starts,
    or at `finish()`; use it as a context manager, which finishes it (a stage cut short by an
    exception prints no line: the error says what happened)."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, prefix: str = "hemgs"):
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.prefix = prefix
        self._stage: str | None = None
        self._step = self._total = 0
        self._info: dict = {}
        self._t0 = 0.0
        self._bar = None

    def __call__(self, stage: str, step: int, total: int, info: dict | None = None) -> None:
        step, total = int(step), int(total)
        if self._stage is not None and (stage != self._stage or step < self._step):
            self._end()
        if self._stage is None:
            self._start(stage, total)
        self._step, self._total = step, total
        if info:
            self._info = info
        if self._bar is not None:
            self._bar.total = total
            shown = {k: _short(v) for k, v in (info or {}).items() if isinstance(v, (float, str))}
            if shown:
                self._bar.set_postfix(shown, refresh=False)
            self._bar.update(step - self._bar.n)
        if step >= total:
            self._end()

    def counter(self, stage: str) -> Callable[[int, int], None]:
        """A count callback `(done, total)` that reports as `stage`."""
        return lambda done, total: self(stage, done, total, {})

    def finish(self, failed: bool = False) -> None:
        """End the stage under way: its line (or bar) as it stands; nothing when `failed`."""
        if self._stage is not None:
            self._end(failed)

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(failed=exc_type is not None)

    def _start(self, stage: str, total: int) -> None:
        self._stage, self._step, self._total, self._info = stage, 0, total, {}
        self._t0 = time.perf_counter()
        if self.tty:
            from tqdm import tqdm

            name, unit = STAGES.get(stage, (stage, None))
            # the terminal's size as it changes; 80x24 where it says 0x0 (a pseudo-terminal nobody
            # sized, e.g. under `script -qc`), on which tqdm would draw nothing
            width = {"dynamic_ncols": True} if _columns(self.stream) else {"ncols": 80, "nrows": 24}
            self._bar = tqdm(total=total, desc=name, unit=unit or "it", file=self.stream, leave=True, **width)

    def _end(self, failed: bool = False) -> None:
        if self._bar is not None:
            if failed:
                self._bar.leave = False  # a clean line for the error that follows
            self._bar.close()
            self._bar = None
        elif not failed:
            print(self.line(self._stage, self._step, self._total, time.perf_counter() - self._t0, self._info),
                  file=self.stream, flush=True)
        self._stage = None

    def line(self, stage: str, step: int, total: int, seconds: float, info: dict | None = None) -> str:
        """The one line of a finished stage, e.g. 'hemgs: warm start: 200 steps in 12.3 s (loss 0.0123)'."""
        name, unit = STAGES.get(stage, (stage, None))
        if total <= 1:  # a stage of one step
            count = "done " if step >= total else ""
        else:
            unit = unit or "step"
            count = f"{total:,} {unit}{'' if total == 1 else 's'}"
            if step < total:
                count = f"{step:,} of {count}"
            count += " "
        shown = [f"{k} {_short(v)}" for k, v in (info or {}).items() if isinstance(v, float)]
        return f"{self.prefix}: {name}: {count}in {seconds:.1f} s" + (f" ({', '.join(shown)})" if shown else "")


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
