"""The package's layers: imports point down only (docs/architecture.md), checked on the source text.

Layer by layer, from the bottom: errors; pure building blocks (losses, models, data); config; the engine
(training loop, evaluation, checkpoints, run directory); methods; distillation objectives; runners;
experiment tooling; the command line and the Python API. A module may import its own layer and the ones
below. Imports inside functions are kept for optional or heavy dependencies only.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "kdlab"
LAYERS = [
    ("kdlab", "kdlab.errors"),  # `kdlab` itself: only its __version__
    ("kdlab.losses", "kdlab.models", "kdlab.data"),
    ("kdlab.config",),  # lays a run's settings over its dataset's recipe (kdlab.data)
    ("kdlab.engine",),
    ("kdlab.methods",),
    ("kdlab.distillation",),
    ("kdlab.runner",),
    ("kdlab.experiments", "kdlab.deploy"),
    ("kdlab.cli", "kdlab.api", "kdlab.__main__"),
]
# Function-level imports that are allowed: optional or slow-to-import dependencies, and the CLI/API, which
# import a command's code only when that command runs (so `kdlab --help` stays fast).
LAZY_OK = ("matplotlib", "torchvision", "tensorboard", "torch.utils.tensorboard", "timm", "onnx", "onnxruntime",
           "mlflow", "wandb",
           "PIL", "sklearn", "torch.distributed",
           "kdlab.models.torchvision_models",  # imports torchvision
           "kdlab.models.timm_models",  # imports timm (optional: kdlab[timm])
           "kdlab.experiments.plots")  # imports matplotlib
LAZY_MODULES = ("kdlab.cli", "kdlab.api", "kdlab", "kdlab.__main__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return best[0]


def is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path):
    """(imported kdlab module, line, inside a function) for every import of a kdlab module in `path`."""
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports (from kdlab.x import y)"
            # `from kdlab.x import y` imports module kdlab.x.y when y is a submodule, else a name of kdlab.x
            targets = [f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            yield target, node.lineno, id(node) in inner


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        here = module_name(path)
        for target, line, _ in imports(path):
            if target.startswith("kdlab") and layer_of(target) > layer_of(here):
                upward.append(f"{path.relative_to(SRC.parent)}:{line}: {here} imports {target}")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_function_level_imports_only_for_optional_dependencies():
    inner = []
    for path in sorted(SRC.rglob("*.py")):
        here = module_name(path)
        if here in LAZY_MODULES:
            continue
        for target, line, nested in imports(path):
            if nested and not target.startswith(LAZY_OK):
                inner.append(f"{path.relative_to(SRC.parent)}:{line}: {target}")
    assert not inner, "imports inside functions (move them to the top of the module):\n" + "\n".join(inner)
