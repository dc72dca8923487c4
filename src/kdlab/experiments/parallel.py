"""`kdlab sweep --jobs N`: N grid points at once, each in its own process with its share of the CPU cores.

A run starts once its teacher run has finished (teachers before their students, as the serial sweep orders
them); a run whose teacher failed is skipped. Each worker is a fresh (spawned) process that sets its thread
count to cores // N and runs the run's own Config, quietly (its epochs are in its progress.log): run directories,
checkpoints and resume are exactly those of a serial sweep, so a killed sweep resumes the same way. On a GPU the
N processes share it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from kdlab.errors import KdlabError
from kdlab.runner.distill import run_distill
from kdlab.runner.train import run_train

POLL_S = 0.2


def threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def _worker(name: str, kind: str, config: Any, resume: bool, threads: int, results: Any) -> None:
    """One run in a child process: its summary or its error goes back through `results`."""
    config.threads = threads
    try:
        runner = run_train if kind in ("teacher", "baseline") else run_distill
        summary = runner(config, resume=resume, quiet=True)
        results.put((name, None, {"last": summary.get("last", {}), "best_top1": summary.get("best_top1"),
                                        "best_epoch": summary.get("best_epoch")}))
    except KdlabError as exc:
        results.put((name, str(exc), None))
    except Exception as exc:  # noqa: BLE001 - a bug in one run must not lose the others
        traceback.print_exc()
        results.put((name, f"{type(exc).__name__}: {exc}", None))


def execute_parallel(todo: list[Any], jobs: int, echo: Callable[[str], None],
                     prepare: Callable[[Any], None]) -> dict[str, str]:
    """Run `todo` (PlannedRuns) with at most `jobs` at once; returns run name -> why it failed."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    threads = threads_per_job(jobs)
    pending = list(todo)
    names = {run.name for run in todo}
    running: dict[str, tuple[Any, Any, float]] = {}  # run name -> (process, run, when it started)
    failed: dict[str, str] = {}
    done: set[str] = set()
    started = 0
    echo(f"running {len(todo)} runs, {jobs} at a time, {threads} thread(s) each")
    try:
        while pending or running:
            for run in list(pending):
                if run.teacher in failed:
                    pending.remove(run)
                    failed[run.name] = f"its teacher {run.teacher} failed"
                    echo(f"skip {run.name}: {failed[run.name]}")
                elif len(running) < jobs and (run.teacher not in names or run.teacher in done):
                    pending.remove(run)
                    prepare(run)
                    process = ctx.Process(target=_worker, args=(run.name, run.kind, run.config,
                                                                run.state == "resume", threads, results))
                    process.start()
                    running[run.name] = (process, run, time.perf_counter())
                    started += 1
                    echo(f"[{started}/{len(todo)}] {'resume' if run.state == 'resume' else 'start'} {run.name}")
            _collect(results, running, failed, done, echo)
    except KeyboardInterrupt:
        for process, _, _ in running.values():
            process.terminate()
        echo("sweep interrupted; run the same sweep command again to resume its runs")
        raise
    return failed


def _collect(results: Any, running: dict[str, tuple[Any, Any, float]], failed: dict[str, str], done: set[str],
             echo: Callable[[str], None]) -> None:
    """Wait a moment for finished runs; record each one's outcome (a finished run's line gives its own seconds)."""
    try:
        name, error, summary = results.get(timeout=POLL_S)
    except Exception:  # queue.Empty: nothing finished yet; look for a child that died without a word
        for name, (process, run, _) in list(running.items()):
            if process.exitcode is not None and not process.is_alive():
                running.pop(name)
                failed[run.name] = f"its process ended with exit code {process.exitcode}"
                echo(f"    {run.name} failed: {failed[run.name]}")
        return
    process, run, start = running.pop(name)
    process.join()
    if error is not None:
        failed[run.name] = error
        echo(f"    {run.name} failed: {error}")
        return
    run.state = "done"
    done.add(run.name)
    echo(f"    {run.name} {done_line(summary, start)}")


def done_line(summary: dict[str, Any], start: float) -> str:
    """A finished run's line, serial and parallel alike: its last and best top-1 and its own seconds since
    `start` (a time.perf_counter() reading taken when that run began)."""
    last = summary.get("last", {})
    return (f"done: last top-1 {last.get('test_top1', float('nan')):.2f}%, best {summary['best_top1']:.2f}% "
            f"(epoch {summary['best_epoch']}) [{time.perf_counter() - start:.0f} s]")
