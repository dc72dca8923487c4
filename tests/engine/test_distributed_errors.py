"""A torchrun peer that dies: the survivor ends with one `kdlab: error:` line, not gloo's traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

from kdlab.engine.distributed import peer_lost

# Two processes joined the way torchrun joins them (RANK, WORLD_SIZE, MASTER_ADDR/PORT); rank 1 dies after the
# first collective, rank 0 goes on communicating inside a runner wrapped by `process_group`, as kdlab's are.
SCRIPT = textwrap.dedent("""
    import os, sys, types
    import torch
    import torch.distributed as dist
    from kdlab.cli import main as _  # noqa: F401 - the same imports as a real run
    from kdlab.engine.distributed import process_group
    from kdlab.errors import KdlabError

    @process_group
    def runner(config):
        dist.barrier()
        if dist.get_rank() == 1:
            os._exit(3)  # a crash: no clean shutdown
        for _ in range(3):
            dist.all_reduce(torch.ones(4))

    try:
        runner(types.SimpleNamespace(device="cpu"))
    except KdlabError as exc:
        print(f"kdlab: error: {exc}", file=sys.stderr)
        sys.exit(2)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_survivor_of_a_dead_peer_gets_one_line():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "LOCAL_RANK": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], env={**env, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=120) for p in procs]
    survivor_err = outputs[0][1]
    assert procs[1].returncode == 3
    assert procs[0].returncode == 2, survivor_err
    lines = survivor_err.strip().splitlines()
    assert "Traceback" not in survivor_err and len(lines) == 1, survivor_err
    assert lines[0].startswith("kdlab: error: another torchrun process stopped") and "--resume" in lines[0]


def test_ordinary_runtime_errors_are_not_mistaken_for_a_dead_peer():
    assert peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)")) is None
    assert peer_lost(RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer.")) == \
        "Connection reset by peer"
