"""Pieces of the training loop (kdlab.engine.trainer) on their own."""

import torch

from kdlab.engine.objectives import StepOutput
from kdlab.engine.trainer import EpochTally


def step(loss, terms, logits=None):
    return StepOutput(loss=torch.tensor(loss), terms={k: torch.tensor(v) for k, v in terms.items()}, logits=logits)


def test_epoch_tally_means_per_step_and_counts_correct_predictions():
    tally = EpochTally(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    tally.add(step(1.0, {"kd": 0.5, "ce": 0.25}, logits), torch.tensor([0, 1, 1]))  # 2 of 3 correct
    tally.add(step(3.0, {"kd": 1.5, "ce": 0.75}), torch.tensor([0, 1]))  # no logits: counted as seen only
    totals, correct, seen = tally.totals()
    assert totals == {"loss": 2.0, "kd": 1.0, "ce": 0.5} and list(totals) == ["loss", "kd", "ce"]
    assert (correct, seen, tally.steps) == (2.0, 5, 2)


class TwoRanks:
    """A stand-in for kdlab.engine.distributed.Context: the other rank had the same numbers."""

    world_size = 2

    def all_reduce_sum(self, tensor):
        return tensor * 2


def test_epoch_tally_sums_over_ranks_in_one_reduction():
    tally = EpochTally(torch.device("cpu"))
    tally.add(step(1.0, {"kd": 0.5, "ce": 0.25}, torch.tensor([[1.0, 0.0]])), torch.tensor([0]))
    totals, correct, seen = tally.totals(TwoRanks())
    assert totals == {"ce": 0.25, "kd": 0.5, "loss": 1.0} and list(totals) == ["ce", "kd", "loss"]  # sorted
    assert (correct, seen) == (2.0, 2)
