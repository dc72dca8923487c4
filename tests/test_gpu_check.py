"""benchmarks/gpu_check.sh, the one script for a GPU machine: it exists, is executable, parses as bash, names files
that exist, and is documented. Its CPU smoke mode (GPU_CHECK_SMOKE=1) takes about a minute, so it is run by hand
(benchmarks/README.md), not here."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_script_is_executable_valid_bash() -> None:
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK)
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    result = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_script_names_files_that_exist_and_is_documented() -> None:
    text = SCRIPT.read_text()
    named = set(re.findall(r"(benchmarks/\w+\.py|configs/cifar100/[\w/-]+\.yaml)", text))
    named |= {f"configs/cifar100/resnet56-resnet20/{m}.yaml" for m in ("kd", "dkd", "dist", "crd")}
    assert {"benchmarks/reference_loop.py", "benchmarks/compile_step.py"} <= named
    assert [n for n in sorted(named) if not (ROOT / n).is_file()] == []
    assert "pytest -m gpu" in text and "GPU_CHECK_SMOKE" in text
    assert "gpu_check.sh" in (ROOT / "benchmarks" / "README.md").read_text()
