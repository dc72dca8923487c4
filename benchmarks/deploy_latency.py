"""Inference latency of zoo models per backend (PyTorch eager fp32, channels_last, bf16 where native, ONNX Runtime
fp32 and int8), measured by kdlab.deploy.latency as `kdlab profile` measures it, on randomly initialised models
(latency does not depend on the weights; the int8 model is calibrated on random inputs, so only its speed means
anything here). For trained runs with accuracy use `kdlab profile RUNS`.

    python benchmarks/deploy_latency.py --models resnet56,resnet20,resnet8x4 --threads 2
    python benchmarks/deploy_latency.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from kdlab import models
from kdlab.deploy import latency
from kdlab.deploy.export import export_model, user_spec
from kdlab.deploy.quantize import quantize_model
from kdlab.deploy.samples import preprocess, random_samples


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet56,resnet20,resnet8x4,resnet8")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="one tiny model, 8 px, 3 repeats: checks the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.image_size, args.classes, args.batches, args.repeats, args.warmup = \
            "resnet8", 8, 10, "1,4", 3, 1
    batches = [int(b) for b in args.batches.split(",")]
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    spec = user_spec((3, args.image_size, args.image_size), (0.5,) * 3, (0.25,) * 3)
    lines = [latency.environment(threads) + f"; {args.image_size}px inputs, p50 / p90 ms of {args.repeats} calls "
             f"after {args.warmup} warm-up calls", "",
             "| model | backend | " + " | ".join(f"batch {b} p50 / p90" for b in batches) + " |",
             "|---|---|" + "---:|" * len(batches)]
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = models.create(name, args.classes, image_size=args.image_size).eval()
            fp32, int8 = Path(work) / f"{name}.onnx", Path(work) / f"{name}.int8.onnx"
            export_model(model, fp32, "onnx", spec=spec, check=4)
            quantize_model(model, int8, random_samples(spec, 64), spec=spec)
            for backend, run in latency.backends(model, fp32, int8, threads).items():
                cells = []
                for batch in batches:
                    t = latency.measure(run, preprocess(random_samples(spec, batch).pixels, spec), args.warmup,
                                        args.repeats)
                    cells.append(f"{t.p50_ms:.3f} / {t.p90_ms:.3f}")
                lines.append(f"| {name} | {backend} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
