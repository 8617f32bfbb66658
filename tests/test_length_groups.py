"""train.length_groups: rows grouped by length, each group padded to its own longest row,
train the same objective as the one padded batch (same loss, same gradients)."""

import itertools
import math

import pytest
import torch

from unimm.paradigms.sequence import split_by_length
from unimm.runs import RunConfig
from unimm.utils.config import load_config
from helpers import new_trainer


def _area(groups, lengths):
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def test_split_by_length_is_a_partition_with_the_least_padding():
    lengths = [5, 30, 7, 31, 6, 12, 29, 8]
    for k in (1, 2, 3):
        got = split_by_length(lengths, k)
        assert sorted(i for g in got for i in g) == list(range(len(lengths))) and len(got) <= k
        srt = sorted(range(len(lengths)), key=lengths.__getitem__)
        best = min(_area([srt[a:b] for a, b in zip((0, *cuts), (*cuts, len(srt)))], lengths)
                   for cuts in itertools.combinations(range(1, len(srt)), k - 1))
        assert _area(got, lengths) == best
    assert split_by_length([4, 4, 4], 5) == [[0, 1, 2]]          # no gain from empty groups


@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_groups_give_the_same_loss_and_gradients(tiny_tokenizer, tmp_path, reduction):
    over = [f"image_tokenizer_path={tiny_tokenizer}", "train.precision=fp32", "data.vqa_turns=4",
            f"ar.loss_reduction={reduction}"]
    res = []
    for g in (1, 3):
        cfg = load_config(RunConfig, "configs/tiny.toml", over + [f"train.length_groups={g}"])
        tr = new_trainer(cfg, tmp_path / f"g{g}", progress=False)
        batch = tr.stream.batch(0)
        lens = batch.valid.sum(1)
        assert lens.max() > 1.5 * lens.min()                # long VQA rows mix with short ones
        tr.model.zero_grad()
        loss, stats = tr._loss_backward(batch, None, torch.autocast("cpu", enabled=False))
        res.append((float(loss.detach()), {n: p.grad.clone() for n, p in tr.model.named_parameters()
                                  if p.grad is not None}, stats))
    (l1, g1, s1), (l3, g3, _) = res
    assert l1 == pytest.approx(l3, rel=1e-5)
    assert g1.keys() == g3.keys()
    for n in g1:
        assert torch.allclose(g1[n], g3[n], rtol=1e-4, atol=1e-7), n
    assert math.isfinite(s1["loss/image"])


def test_groups_train_every_paradigm_and_are_checked(tiny_tokenizer, tmp_path):
    for name in ("masked", "flow"):
        cfg = load_config(RunConfig, "configs/tiny.toml",
                          [f"image_tokenizer_path={tiny_tokenizer}", f"paradigm={name}",
                           "train.length_groups=2"])
        tr = new_trainer(cfg, tmp_path / name, progress=False)
        assert math.isfinite(tr.train_step()["loss"])
    with pytest.raises(ValueError, match="length_groups"):
        load_config(RunConfig, "configs/tiny.toml", ["train.length_groups=0"])
