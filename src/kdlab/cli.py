"""The `kdlab` command: train, distill, eval, demo, sweep, report, list.

Bad input ends with one line `kdlab: error: ...` naming the problem and the fix, exit status 2, no
traceback, nothing overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from kdlab.errors import KdlabError


def _common_run_args(p: argparse.ArgumentParser, model_flag: str = "--model") -> None:
    p.add_argument("--data", help="dataset name (kdlab list datasets); default digits")
    p.add_argument("--data-root", help="folder holding the dataset files (default $KDLAB_DATA or ./data)")
    p.add_argument(model_flag, dest="model", help="model name (kdlab list models)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--precision", help="fp32 | bf16 | fp16 (autocast; bf16 works on CPU)")
    p.add_argument("--fraction", type=float, help="train on a stratified fraction of the data, e.g. 0.5")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run directory (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt, with the "
                   "settings it was started with (config.yaml); settings that change the run are refused")
    p.add_argument("--extend-to", type=int, metavar="N", help="with --resume: train a run on to epoch N, keeping "
                   "the LR of its schedule's last epoch for the added epochs")
    p.add_argument("--config", help="YAML config file; flags and key=value override it")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the trained model")
    p.add_argument("--deterministic", action="store_true", default=None, help="bit-reproducible CPU runs")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    _recipe_args(p)
    p.add_argument("--logger", type=_logger_list, metavar="NAMES", help="experiment trackers besides metrics.jsonl: "
                   "comma list of tensorboard (default), mlflow, wandb (offline), or none")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. optim.lr=0.1 method.kd.temperature=4 data.workers=4")


def _recipe_args(p: argparse.ArgumentParser) -> None:
    """Training-recipe and evaluation flags of train/distill/mutual (README: Training recipe)."""
    p.add_argument("--optimizer", help="sgd (default; momentum, optim.nesterov) | adamw (optim.betas, decoupled "
                   "weight decay) | dot (distill: separate task/distillation momenta, optim.dot_delta)")
    p.add_argument("--label-smoothing", type=float, metavar="EPS", help="label smoothing of the CE term, e.g. 0.1")
    p.add_argument("--mixup", type=float, metavar="ALPHA", help="mixup with Beta(ALPHA, ALPHA), e.g. 0.2")
    p.add_argument("--cutmix", type=float, metavar="ALPHA", help="CutMix with Beta(ALPHA, ALPHA), e.g. 1.0")
    p.add_argument("--randaugment", metavar="N,M", help="RandAugment: N ops per image at magnitude M (0..30), "
                   "e.g. 2,9")
    p.add_argument("--clip-grad-norm", type=float, metavar="MAX", help="clip each step's gradient norm to MAX")
    p.add_argument("--ema-decay", type=float, metavar="D", help="evaluate and save an EMA of the weights, e.g. "
                   "0.999")
    p.add_argument("--eval-every", type=int, metavar="K", help="evaluate every K epochs (and at the last)")
    p.add_argument("--eval-subset", type=int, metavar="N", help="evaluate on a fixed class-stratified subset of N "
                   "test images")
    p.add_argument("--log-every", type=int, metavar="STEPS", help="a progress line every STEPS steps (default 50)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlab", description="Knowledge distillation for image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model with cross-entropy (a teacher or a baseline student)")
    _common_run_args(p)
    p.add_argument("--weights", help="start from these weights (a state_dict file or a kdlab checkpoint); a "
                   "classifier for another number of classes is replaced by a new one")
    _qat_arg(p, "--weights")
    _resolution_args(p)

    p = sub.add_parser("distill", help="distill a trained teacher into a student")
    _common_run_args(p, "--student")
    p.add_argument("--teacher", action="append", help="teacher checkpoint (a kdlab last.pt/best.pt)")
    p.add_argument("--teacher-model", help="architecture of an outside teacher (with --teacher-weights)")
    p.add_argument("--teacher-weights", help="local weights file of the outside teacher")
    p.add_argument("--student-weights", dest="weights", help="start the student from these weights (a state_dict "
                   "file or a kdlab checkpoint); a classifier for another number of classes is replaced")
    _qat_arg(p, "--student-weights")
    p.add_argument("--method", help="method name or combination, e.g. kd, dkd, dist, kd+at")
    p.add_argument("--ce-weight", type=float, help="cross-entropy weight (default: the method's)")
    p.add_argument("--init-epochs", type=int, help="epochs of a method's initialisation stage")
    p.add_argument("--teacher-mix", type=_float_list, help="weights of several teachers, e.g. 0.7,0.3 (default equal)")
    p.add_argument("--cache-teacher", action="store_true", default=None,
                   help="reuse teacher outputs across epochs and runs (needs data.augment=false or "
                        "data.fixed_augmentation=true; cache_dir=DIR)")
    _resolution_args(p)

    p = sub.add_parser("mutual", help="deep mutual learning: a cohort of students trained together")
    _common_run_args(p, "--models")
    p.add_argument("--variant", default="dml", help="dml (KL from each peer) | dml_e (KL from the peers' average)")

    p = sub.add_parser("eval", help="evaluate a run or checkpoint: top-1, top-5, NLL, ECE (every cohort student)")
    p.add_argument("--checkpoint", required=True, help="run directory (its last.pt) or checkpoint file")
    p.add_argument("--data", help="dataset (default: the one the model was trained on)")
    p.add_argument("--data-root")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--member", help="of a mutual cohort, only this student (index or name)")
    p.add_argument("--teacher", help="teacher checkpoint: also report how often the student predicts its class")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="data settings, e.g. data.workers=4")

    p = sub.add_parser("calibration", help="calibration study: reliability diagrams and ECE of runs (and of the "
                       "Tf-KD virtual teacher's signal)")
    p.add_argument("--run", action="append", required=True, help="run directory (repeat for several runs)")
    p.add_argument("--out", help="reliability-diagram PNG (default <first run>/calibration.png; table beside it)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint of each run")
    p.add_argument("--data-root", help="override the data root recorded in the runs")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("list", help="list models, datasets or methods")
    p.add_argument("what", choices=["models", "datasets", "methods"])

    p = sub.add_parser("demo", help="a real distillation on the embedded digits data, with a results table")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--force", action="store_true", help="replace an earlier demo in --out")

    p = sub.add_parser("sweep", help="run a grid of train/distill runs from a YAML file (resumable)")
    p.add_argument("file", help="sweep YAML (see docs/experiments.md)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, their state and commands; run nothing")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="only runs whose name matches (glob, or a part of the name); repeatable")
    p.add_argument("--out", help="sweep root (default: the file's 'out')")
    p.add_argument("--data-root", help="folder holding the datasets (default: the file's 'data_root')")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="run N grid points at once, each with "
                   "cores/N threads (docs/experiments.md)")

    p = sub.add_parser("report", help="tables and plots from run directories or sweep roots")
    p.add_argument("paths", nargs="+", metavar="RUNS_OR_SWEEP_DIR")
    p.add_argument("--format", default="md", help="md (Markdown tables) | csv (one row per cell)")
    p.add_argument("--out", help="write the report to this file instead of printing it")
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots (curves, accuracy vs ECE, reliability)")
    p.add_argument("--epoch", default="both", help="best | last | both (default both, each labelled)")
    p.add_argument("--metrics", default="top1,ece", help="comma list of top1, top5, nll, ece (default top1,ece)")
    _deploy_parsers(sub)
    return parser


def _deploy_parsers(sub) -> None:
    """export, quantize, profile (kdlab.deploy; docs/deploy.md)."""
    p = sub.add_parser("export", help="export a run's model to ONNX, TorchScript or PT2, checked against PyTorch")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--format", default="onnx", help="onnx (default) | torchscript | pt2")
    p.add_argument("--out", required=True, help="file to write (its preprocessing goes to FILE.json)")
    p.add_argument("--member", help="a mutual cohort's student: index or name")
    p.add_argument("--check", type=int, default=8, metavar="N", help="test images the export is checked on")
    p.add_argument("--data", help="also compare the exported model's test top-1 with PyTorch's on this dataset")
    p.add_argument("--data-root")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")

    p = sub.add_parser("quantize", help="int8 static post-training quantization of a run's model (ONNX Runtime)")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--calibration", type=int, default=512, metavar="N", help="training images to calibrate on")
    p.add_argument("--out", required=True, help="int8 ONNX file to write (preprocessing in FILE.json)")
    p.add_argument("--member", help="a mutual cohort's student: index or name")
    p.add_argument("--data", help="dataset (default: the run's)")
    p.add_argument("--data-root")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per channel)")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")

    p = sub.add_parser("profile", help="parameters, MACs, sizes, latency, top-1/ECE of runs and their teachers")
    p.add_argument("paths", nargs="+", metavar="RUNS")
    p.add_argument("--data", help="dataset for the int8 accuracy and calibration (default: each run's)")
    p.add_argument("--data-root")
    p.add_argument("--format", default="markdown", help="markdown (default) | csv")
    p.add_argument("--out", help="write the table to this file instead of printing it")
    p.add_argument("--plot", metavar="FILE", help="also write top-1 against latency with the Pareto front (PNG)")
    p.add_argument("--calibration", type=int, default=256, metavar="N", help="training images for the int8 model")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls before each measurement")
    p.add_argument("--threads", type=int, help="threads for PyTorch and ONNX Runtime (default: torch's)")


def _qat_arg(p: argparse.ArgumentParser, weights_flag: str) -> None:
    p.add_argument("--qat", action="store_true", default=None, help="quantization-aware training: fake-quantized "
                   f"int8 weights and uint8 activations as kdlab quantize deploys them (usually with {weights_flag} "
                   "of a trained model, a few epochs at a small --lr); then kdlab quantize")


def _resolution_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student-resolution", type=int, help="cross-quality: the student sees a downscaled R x R "
                   "view of each batch (and is evaluated at R); data.student_resize_mode=area|bilinear")
    p.add_argument("--downscale", type=int, help="cross-quality: student resolution = image size // K")


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers, e.g. 0.7,0.3") from None


def _logger_list(text: str) -> list[str]:
    """'tensorboard,mlflow' -> ['tensorboard', 'mlflow']; 'none' -> [] (names are checked with the config)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    return [] if names == ["none"] else names


FLAG_KEYS = {  # argparse dest -> config key
    "data": "data.name", "data_root": "data.root", "model": "model", "epochs": "optim.epochs",
    "batch_size": "data.batch_size", "lr": "optim.lr", "precision": "precision", "fraction": "data.fraction",
    "seed": "seed", "out": "out", "channels_last": "channels_last", "compile": "compile",
    "deterministic": "deterministic", "device": "device", "threads": "threads", "teacher": "teachers",
    "teacher_model": "teacher_model", "teacher_weights": "teacher_weights", "method": "method", "weights": "weights",
    "ce_weight": "ce_weight", "init_epochs": "init_epochs", "teacher_mix": "teacher_mix",
    "cache_teacher": "cache_teacher", "extend_to": "optim.extend_to",
    "optimizer": "optim.optimizer", "label_smoothing": "label_smoothing", "mixup": "data.mixup",
    "cutmix": "data.cutmix", "randaugment": "data.randaugment", "clip_grad_norm": "optim.clip_grad_norm",
    "ema_decay": "ema_decay", "eval_every": "eval_every", "eval_subset": "eval_subset", "log_every": "log_every",
    "logger": "loggers", "student_resolution": "data.student_resolution", "downscale": "data.downscale",
    "qat": "qat",
}


def config_from_args(args: argparse.Namespace):
    from kdlab import config as cfg

    layers: list[dict[str, Any]] = [_resumed_run_config(args)]
    if args.config:
        layers.append(cfg.load_yaml(args.config))
    flags = [f"{key}={_yaml(getattr(args, dest))}" for dest, key in FLAG_KEYS.items()
             if getattr(args, dest, None) is not None]
    flag_layer, override_layer = cfg.parse_overrides(flags), cfg.parse_overrides(args.overrides)
    _refuse_conflicts(args, cfg.flatten(flag_layer), cfg.flatten(override_layer))
    layers += [flag_layer, override_layer]
    config = cfg.build(layers)
    if config.method:  # one spelling ('KD+FN' -> 'kd+fitnet') in run names, config.yaml and reports
        from kdlab import methods

        config.method = methods.canonical_spec(config.method)
        config.methods = methods.canonical_hparams(config.methods)
        if getattr(args, "command", None) == "distill" and ("init_epochs" in flag_layer or
                                                            "init_epochs" in override_layer):
            methods.check_init_epochs(config.method, config.init_epochs)
    return config


def _refuse_conflicts(args: argparse.Namespace, flags: dict[str, Any], overrides: dict[str, Any]) -> None:
    """A flag and a key=value that set one key to different values: refuse, rather than one silently winning."""
    dests = {key: dest for dest, key in FLAG_KEYS.items()}
    for key, value in overrides.items():
        if key in flags and flags[key] != value:
            dest = dests[key]
            flag = "--" + dest.replace("_", "-")
            if dest == "model":
                flag = {"distill": "--student", "mutual": "--models"}.get(getattr(args, "command", None), "--model")
            elif dest == "weights" and getattr(args, "command", None) == "distill":
                flag = "--student-weights"
            given = getattr(args, dest)
            flag_text = flag if given is True else f"{flag} {_yaml(given)}"
            item = next((o for o in reversed(args.overrides) if o.split("=", 1)[0].strip() == key),
                        f"{key}={value}")
            raise KdlabError(f"{flag_text} and {item} both set {key}, to different values; give it once")


def _resumed_run_config(args: argparse.Namespace) -> dict[str, Any]:
    """With --resume --out DIR: the run's saved config.yaml, under the flags given now (a bare
    `--resume --out DIR` continues the run as it was started; kdlab.engine.trainer refuses changes)."""
    from pathlib import Path

    from kdlab import config as cfg

    saved = Path(args.out) / "config.yaml" if getattr(args, "resume", False) and args.out else None
    if saved is None or not saved.is_file():
        return {}
    try:
        return cfg.load_yaml(saved)
    except KdlabError as exc:
        raise KdlabError(f"cannot resume: {exc} (the run's saved settings); restore it or start a new run") from None


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)


def done_line(summary: dict[str, Any]) -> str:
    """The last line of train/distill: best and last top-1, or that the student diverged."""
    where = f"run directory {summary['run_dir']}"
    diverged = summary.get("diverged_epochs") or []
    best = (f"best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']})"
            if summary.get("best_top1") is not None else "no finite evaluation")
    if summary.get("diverged"):
        return (f"done: diverged: the test outputs were NaN/inf in epoch {diverged[-1]} (the last); {best}; lower "
                f"optim.lr or use --precision fp32; {where}")
    note = f"; diverged in epoch(s) {', '.join(map(str, diverged))}" if diverged else ""
    last = summary["last"].get("test_top1")
    last_text = f"last top-1 {last:.2f}%" if last is not None else "no last-epoch metrics"
    return f"done: {best}, {last_text}{note}; {where}"


def cmd_list(args: argparse.Namespace) -> None:
    what = args.what
    if what == "models":
        from kdlab import models

        for name in models.list_models():
            print(f"{name:<20} {models.model_info(name).get('description', '')}")
        print("tv:<name>            any torchvision classification model (weights from a local file only)")
        print(models.TIMM_USAGE)
    elif what == "datasets":
        from kdlab import data

        for name in data.list_datasets():
            info = data.dataset_info(name)
            classes = info.get("num_classes") or "any"
            print(f"{name:<14} {classes:>5} classes  {info.get('description', '')}")
    else:
        from kdlab.methods.catalog import text_listing

        print(text_listing())


def _run_and_report(args: argparse.Namespace, runner: Callable[..., dict[str, Any]]) -> None:
    """train/distill: build the config from the flags, run it, end with the done line."""
    config = config_from_args(args)
    summary = runner(config, resume=args.resume, quiet=args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line, from rank 0
        print(done_line(summary))


def cmd_train(args: argparse.Namespace) -> None:
    from kdlab.runner.train import run_train

    _run_and_report(args, run_train)


def cmd_distill(args: argparse.Namespace) -> None:
    from kdlab.runner.distill import run_distill

    _run_and_report(args, run_distill)


def cmd_eval(args: argparse.Namespace) -> None:
    from kdlab import config as cfg
    from kdlab.engine.precision import pick_device
    from kdlab.experiments.evaluation import describe, evaluate_checkpoint

    if args.threads is not None:
        if args.threads < 1:
            raise KdlabError(f"--threads must be >= 1, got {args.threads}")
        torch_threads(args.threads)
    layer = cfg.parse_overrides(args.overrides)
    if set(layer) - {"data"}:
        raise KdlabError(f"kdlab eval takes data.* settings only, not {sorted(set(layer) - {'data'})[0]}.*")
    data, results = evaluate_checkpoint(args.checkpoint, args.data, args.data_root, args.batch_size, args.precision,
                                        pick_device(args.device), args.member, args.teacher, layer.get("data"))
    for item in results:
        print(describe(data, item))


def torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def cmd_mutual(args: argparse.Namespace) -> None:
    from kdlab.runner.mutual import run_mutual

    names = [n.strip() for n in (args.model or "").split(",") if n.strip()]
    if len(names) < 2:
        raise KdlabError("deep mutual learning needs at least 2 students; pass --models a,b[,c...]")
    args.model = names[0]  # the recipe (e.g. MobileNet's LR) follows the first student
    config = config_from_args(args)
    summary = run_mutual(config, names, args.variant, resume=args.resume, quiet=args.quiet)
    for name, result in summary["students"].items():
        print(f"{name:<24} top-1 {result['top1']:6.2f}%  ECE {result['ece']:5.2f}%")
    print(f"run directory {summary['run_dir']}")


def cmd_report(args: argparse.Namespace) -> None:
    from kdlab.experiments.report import make_report

    text = make_report(args.paths, fmt=args.format, epoch=args.epoch, metrics=args.metrics, out=args.out,
                       plots=args.plots)
    if args.out:
        print(f"report written to {args.out}")
    else:
        print(text, end="")
    if args.plots:
        print(f"plots written to {args.plots}/")


def cmd_calibration(args: argparse.Namespace) -> None:
    from kdlab.experiments.calibration import calibration_study

    calibration_study(args.run, out=args.out, checkpoint=args.checkpoint, data_root=args.data_root,
                      device=args.device)


def cmd_demo(args: argparse.Namespace) -> None:
    from kdlab.experiments.demo import run_demo

    run_demo(args.out, epochs=args.epochs, force=args.force)


def cmd_export(args: argparse.Namespace) -> None:
    from kdlab.deploy.export import export_run

    export_run(args.source, args.out, args.format, member=args.member, check=args.check, data=args.data,
               data_root=args.data_root, force=args.force, opset=args.opset, log=_deploy_log)


def cmd_quantize(args: argparse.Namespace) -> None:
    from kdlab.deploy.quantize import quantize_run

    quantize_run(args.source, args.out, args.calibration, member=args.member, data=args.data,
                 data_root=args.data_root, force=args.force, per_channel=not args.per_tensor, log=_deploy_log)


def cmd_profile(args: argparse.Namespace) -> None:
    from pathlib import Path

    from kdlab.deploy.files import claim_target
    from kdlab.deploy.profile import profile

    if args.out:
        claim_target(args.out, flag="--out", can_force=False)
    text = profile(args.paths, data=args.data, data_root=args.data_root, fmt=args.format, plot=args.plot,
                   calibration=args.calibration, warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                   log=lambda line: print(line, file=sys.stderr))
    if args.out:
        Path(args.out).write_text(text)
        print(f"profile written to {args.out}")
    else:
        print(text, end="")
    if args.plot:
        print(f"plot written to {args.plot}")


def _deploy_log(line: str) -> None:
    print(line, file=sys.stderr if line.startswith("kdlab: ") else sys.stdout)


def cmd_sweep(args: argparse.Namespace) -> None:
    from kdlab.experiments.sweep import run_sweep

    run_sweep(args.file, out=args.out, data_root=args.data_root, only=args.only, dry_run=args.dry_run,
              quiet=args.quiet, jobs=args.jobs)


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {  # command name -> its handler
    "train": cmd_train, "distill": cmd_distill, "mutual": cmd_mutual, "eval": cmd_eval,
    "calibration": cmd_calibration, "list": cmd_list, "demo": cmd_demo, "sweep": cmd_sweep, "report": cmd_report,
    "export": cmd_export, "quantize": cmd_quantize, "profile": cmd_profile,
}


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse argv; key=value overrides may stand anywhere among the flags (argparse takes one contiguous run
    of them), anything else unknown is an argparse error (exit 2)."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        COMMANDS[args.command](args)
    except KdlabError as exc:
        print(f"kdlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdlab: interrupted; resume the run with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
