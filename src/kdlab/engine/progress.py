"""Progress of a training epoch that a log can show: one line every `log_every` steps (step/steps, loss,
images per second, time left in the epoch), printed when stdout is not a terminal (a log file, a pipe, a job
scheduler) and always appended, with each epoch's line, to the run directory's progress log
(kdlab.engine.rundir.PROGRESS_LOG)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO


def clock(seconds: float) -> str:
    """4000 -> '1:06:40', 75 -> '0:01:15'."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def step_line(epoch: int, epochs: int, step: int, steps: int | None, loss: float, mean_loss: float,
              images_per_sec: float, elapsed: float) -> str:
    """'epoch 3/30  step 50/157  loss 2.3412 (epoch mean 2.5011)  1234 img/s  ETA 0:01:08' (the epoch's)."""
    where = f"step {step}/{steps}" if steps else f"step {step}"
    eta = f"  ETA {clock(elapsed / step * (steps - step))}" if steps and step else ""
    return (f"epoch {epoch}/{epochs}  {where}  loss {loss:.4f} (epoch mean {mean_loss:.4f})  "
            f"{images_per_sec:.0f} img/s{eta}")


class ProgressLog:
    """Appends lines to `path` (flushed each time); `echo` also prints them to `stream` (stdout)."""

    def __init__(self, path: str | Path, echo: bool, stream: TextIO | None = None):
        self.path = Path(path)
        self.echo = echo
        self.stream = stream
        self._file = self.path.open("a")

    def write(self, line: str, echo: bool | None = None) -> None:
        self._file.write(line + "\n")
        self._file.flush()
        if self.echo if echo is None else echo:
            print(line, file=self.stream or sys.stdout, flush=True)

    def close(self) -> None:
        self._file.close()


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
