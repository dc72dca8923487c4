"""Experiment trackers a run reports its epochs to, besides metrics.jsonl (always written, the run's record).

`loggers: [tensorboard]` is the default; `--logger tensorboard,mlflow,wandb` picks any of them, `--logger none`
none. Each is off unless asked, and one that is asked for but not installed stops the run before it trains,
in one line naming the extra to install.
  tensorboard  event files in <run>/tb (torch.utils.tensorboard).
  mlflow       one MLflow run per kdlab run, in MLflow's default local store (mlflow.db in the working
               directory) or $MLFLOW_TRACKING_URI; experiment `kdlab` unless $MLFLOW_EXPERIMENT_NAME; the
               config as params; every numeric field of each epoch as a metric at step = epoch.
  wandb        Weights & Biases in offline mode (nothing leaves the machine; `wandb sync <run>/wandb/...`
               uploads later), files in <run>/wandb, project `kdlab` unless $WANDB_PROJECT.
A resumed run continues the same MLflow / W&B run: their ids are kept in <run>/trackers.json.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from kdlab.config import TRACKERS, flatten
from kdlab.errors import KdlabError

IDS_FILE = "trackers.json"
EXTRAS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}  # name -> (module, kdlab extra)


def check_installed(names: list[str]) -> None:
    """One line for the first tracker asked for whose package is missing."""
    for name in names:
        module, extra = EXTRAS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise KdlabError(f"--logger {name} needs the {module} package: pip install 'kdlab[{extra}]' (or drop "
                             f"{name} from --logger)")


def numeric(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite-or-not numeric fields except the epoch (bools and nulls left out)."""
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict[str, Any], ids: dict[str, str]):
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - slow import, optional at run time

        self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, record: dict[str, Any], step: int) -> None:
        for key, value in numeric(record).items():
            self.writer.add_scalar(key.replace("_", "/", 1), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, run_dir: Path, config: dict[str, Any], ids: dict[str, str]):
        import mlflow  # noqa: PLC0415 - optional dependency

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "kdlab"))
        if "mlflow" in ids:
            self.run = mlflow.start_run(run_id=ids["mlflow"])
        else:
            self.run = mlflow.start_run(run_name=run_dir.name, tags={"kdlab.run_dir": str(run_dir.resolve())})
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(config).items()})
        ids["mlflow"] = self.run.info.run_id

    def log(self, record: dict[str, Any], step: int) -> None:
        values = {k: v for k, v in numeric(record).items() if v == v}  # MLflow refuses NaN
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class WandB:
    def __init__(self, run_dir: Path, config: dict[str, Any], ids: dict[str, str]):
        os.environ.setdefault("WANDB_SILENT", "true")  # its banner would bury the epoch lines; one line below
        import wandb  # noqa: PLC0415 - optional dependency

        kwargs = {"id": ids["wandb"], "resume": "allow"} if "wandb" in ids else {}
        self.run = wandb.init(mode="offline", dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", "kdlab"),
                              name=run_dir.name, config=config, reinit="create_new", **kwargs)
        ids["wandb"] = self.run.id
        self.dir = self.run.dir.removesuffix("/files") if isinstance(self.run.dir, str) else self.run.dir

    def log(self, record: dict[str, Any], step: int) -> None:
        self.run.log(numeric(record), step=step)

    def close(self) -> None:
        self.run.finish()
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"kdlab: W&B offline run in {self.dir}; upload it with: wandb sync {self.dir}", flush=True)


CLASSES = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}
assert set(CLASSES) == set(TRACKERS)


def open_trackers(run_dir: Path, names: list[str], config: dict[str, Any]) -> list[Any]:
    """The trackers `names` for this run directory, continuing those of a resumed run (trackers.json)."""
    check_installed(names)
    path = run_dir / IDS_FILE
    ids = json.loads(path.read_text()) if path.exists() else {}
    opened = [CLASSES[name](run_dir, config, ids) for name in names]
    if ids:
        path.write_text(json.dumps(ids, indent=2) + "\n")
    return opened
