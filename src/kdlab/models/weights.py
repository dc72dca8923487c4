"""Loading weights from a local file into a model, with one-line errors for the usual mistakes."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from kdlab.errors import KdlabError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile


def read_state_dict(path: str | Path, kdlab_checkpoints: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict at ``path``: a bare state_dict, or one held under 'state_dict' or 'model'.

    A kdlab checkpoint is refused (a teacher is passed as ``--teacher``, which reads its architecture) unless
    ``kdlab_checkpoints``: then its model weights are returned (initial weights of a model to fine-tune)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise KdlabError(f"weights file '{path}' not found; pass the path of a saved state_dict (.pt/.pth)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same user message
        text = str(error)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if "numpy" in (found.group(1) if found else ""):
            reason = "it looks like a kdlab 0.1 checkpoint: pass it as --teacher, which reads its architecture"
        elif found:  # PyTorch's own message advises weights_only=False, which would run the file's code
            reason = f"it holds Python code references ({found.group(1)}), not just tensors"
        else:
            reason = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        raise KdlabError(
            f"cannot read weights file '{path}' ({reason}); save it with torch.save(model.state_dict(), path)"
        ) from None
    if (isinstance(data, Mapping) and isinstance(data.get("arch"), Mapping) and "kdlab_version" in data
            and not kdlab_checkpoints):
        raise KdlabError(f"'{path}' is a kdlab checkpoint (a {data['arch'].get('model')}): pass it as --teacher "
                         f"{path}, which reads its architecture, instead of --teacher-model/--teacher-weights")
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise KdlabError(
            f"weights file '{path}' holds no state_dict (a dict of tensors, or one under "
            "'state_dict'/'model'); "
            "save it with torch.save(model.state_dict(), path)"
        )
    state = dict(data)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit 3-channel first-conv weights to ``in_channels``: sum RGB for 1 channel, else tile and rescale."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_weights(model: nn.Module, path: str | Path, name: str, input_conv: str | None = None,
                 new_head: str | None = None) -> str | None:
    """Load the weights at ``path`` into ``model`` (model ``name``), failing clearly on any mismatch.

    When ``input_conv`` names a first conv that was rebuilt for another channel count and the file holds
    3-channel weights for it, they are adapted (summed over RGB for grayscale), so ImageNet weights
    still serve 1-channel inputs. With ``new_head`` (the module path of the final Linear classifier), a file
    whose classifier has another number of classes loads everything else and keeps the model's freshly
    initialised classifier: the usual fine-tuning of a pretrained model on new classes. It also accepts a
    kdlab checkpoint then (its model weights). Returns a note saying what was replaced, or None.
    """
    state = read_state_dict(path, kdlab_checkpoints=new_head is not None)
    expected = model.state_dict()
    note = None
    if new_head is not None:
        head = [f"{new_head}.weight", f"{new_head}.bias"]
        if all(k in state and k in expected for k in head[:1]) and state[head[0]].shape != expected[head[0]].shape:
            if state[head[0]].shape[1:] != expected[head[0]].shape[1:]:
                raise KdlabError(f"weights file '{path}' has a classifier on {tuple(state[head[0]].shape[1:])} "
                                 f"features, model '{name}' on {tuple(expected[head[0]].shape[1:])}; use weights of "
                                 f"the same architecture")
            note = (f"new classifier '{new_head}' for {expected[head[0]].shape[0]} classes (the weights file's has "
                    f"{state[head[0]].shape[0]}); every other weight loaded from '{path}'")
            for k in head:
                state.pop(k, None)
                if k in expected:
                    state[k] = expected[k]
    key = f"{input_conv}.weight" if input_conv else None
    if key and key in state and key in expected:
        have, want = state[key], expected[key]
        if have.dim() == 4 and have.shape[1] != want.shape[1] and have.shape[0] == want.shape[0]:
            state[key] = _adapt_input_conv(have, want.shape[1])
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches (first: {mismatched[0]}, file vs model)")
        if missing:
            problems.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise KdlabError(
            f"weights file '{path}' does not fit model '{name}': {'; '.join(problems)}; "
            "use weights saved from the same architecture, num_classes and in_channels"
        )
    model.load_state_dict(state)
    return note
