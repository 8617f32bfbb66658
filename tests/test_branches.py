"""Several question turns about one picture in one training sequence (sequence.py, branches):
each turn must be computed exactly as the one-question sequence it stands for, so that the
model is trained on what it is asked at sampling time."""

import random

import pytest
import torch

from unimm.data.splits import ShapesWorld
from unimm.data.text import QUESTION_KINDS
from unimm.model.backbone import BackboneConfig
from unimm.model.unified import TokenModel
from unimm.paradigms.ar import ARConfig, Autoregressive
from unimm.paradigms.base import Turn, format_turn
from unimm.paradigms.masked import Masked
from unimm.paradigms.sequence import Vocab, collate

V = Vocab(n_text=40, n_codes=16, grid=(2, 3))


def model(seed=0):
    torch.manual_seed(seed)
    m = TokenModel(V.size, BackboneConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=128))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(4)          # logits that really depend on the context
    return m.eval()


def qa_turn(r, n_follow):
    def ids(lo, hi):
        return [r.randrange(V.n_text) for _ in range(r.randint(lo, hi))]
    img = [r.randrange(V.n_codes) for _ in range(V.n_image)]
    return Turn("vqa", ids(1, 5), img, ids(1, 3),
                followups=tuple((ids(1, 5), ids(1, 3)) for _ in range(n_follow)))


def alone(t: Turn) -> list[Turn]:
    """The one-question turns a branched turn stands for."""
    return [Turn("vqa", t.text, t.image, t.answer)] + \
           [Turn("vqa", q, t.image, a) for q, a in t.followups]


PARADIGMS = {
    "ar": lambda: Autoregressive(V),
    "ar-bidirectional": lambda: Autoregressive(V, ARConfig(input_images="bidirectional")),
    "masked": lambda: Masked(V),
}


@pytest.mark.parametrize("name", sorted(PARADIGMS))
def test_each_branch_computes_what_its_question_alone_computes(name):
    par, m = PARADIGMS[name](), model(3)
    r = random.Random(0)
    turns = [qa_turn(r, 3), qa_turn(r, 0), qa_turn(r, 2)]       # rows with and without branches
    batch = collate([format_turn(V, t) for t in turns], V.pad)
    assert batch.branch is not None
    h = par.hidden(m, batch.tokens, batch.pos, par.training_mask(batch), {})
    for b, t in enumerate(turns):
        valid = batch.valid[b]
        toks, br = batch.tokens[b][valid].tolist(), batch.branch[b][valid].tolist()
        hb = h[b][valid]
        pieces = alone(t)
        assert max(br) == (len(pieces) if t.followups else 0)
        for k, one in enumerate(pieces, start=1 if t.followups else 0):
            single = collate([format_turn(V, one)], V.pad)
            hs = par.hidden(m, single.tokens, single.pos, par.training_mask(single), {})[0]
            idx = [i for i, x in enumerate(br) if x in (0, k)]   # the prefix, then this branch
            assert [toks[i] for i in idx] == single.tokens[0].tolist()
            assert batch.pos[b][valid][idx].tolist() == single.pos[0].tolist()
            assert batch.loss[b][valid][idx].tolist() == single.loss[0].tolist()
            torch.testing.assert_close(hb[idx], hs, atol=2e-5, rtol=1e-4)


def test_branch_mask_is_needed():
    """Without the branch mask a later question would see the earlier answers (the equality
    above fails), so the test can fail."""
    par, m = Autoregressive(V), model(4)
    t = qa_turn(random.Random(1), 2)
    batch = collate([format_turn(V, t)], V.pad)
    h = par.hidden(m, batch.tokens, batch.pos, None, {})[0]         # plain causal
    single = collate([format_turn(V, alone(t)[-1])], V.pad)
    hs = par.hidden(m, single.tokens, single.pos, None, {})[0]
    br = batch.branch[0].tolist()
    idx = [i for i, x in enumerate(br) if x in (0, max(br))]
    assert not torch.allclose(h[idx][-1], hs[-1], atol=1e-3)


@pytest.mark.parametrize("shift", [False, True])
def test_mmada_branches_compute_what_each_question_alone_computes(shift):
    """mmada: every question about the picture is a branch with its own masked response span;
    each branch's hidden states, loss targets and <eos> padding weights equal those of its
    one-question sequence with the same masked slots."""
    from unimm.paradigms.masked import IGNORE
    from unimm.paradigms.mmada import MMaDA, MMaDAConfig
    par = MMaDA(V, MMaDAConfig(text_len=6, block=3, steps_per_block=3, shift=shift))
    m = model(5)
    turns = [qa_turn(random.Random(4), 2), qa_turn(random.Random(5), 0)]

    class EveryOther(random.Random):         # a branch's t, then its 6 slots: 5 of 6 masked
        n = 0

        def random(self):
            self.n += 1
            return 0.99 if (self.n - 1) % 7 == 0 else (0.995 if self.n % 7 == 3 else 0.0)
    batch = par.make_batch(turns, EveryOther(0))
    assert batch.branch is not None and int(batch.branch.max()) == 3
    labels = batch.extra["labels"]
    with torch.no_grad():
        h = par.hidden(m, batch.tokens, batch.pos, par.training_mask(batch), {})
        w = par.target_weights(batch, labels, labels != IGNORE)
    w_at = torch.full(labels.shape, float("nan"))
    w_at[labels != IGNORE] = w
    t, valid = turns[0], batch.valid[0]
    br = batch.branch[0][valid]
    for k, (q, a) in enumerate([(t.text, t.answer), *t.followups], start=1):
        idx = (br == 0) | (br == k)
        tok, pos, span = (x[0][valid][idx] for x in (batch.tokens, batch.pos, batch.span))
        single = collate([par.format_labeled(Turn("vqa", q, t.image, a), random.Random(9))[0]],
                         V.pad)
        assert tok.shape == single.tokens[0].shape and torch.equal(pos, single.pos[0])
        one = single.__class__(tok[None], pos[None], single.loss, span[None], single.valid,
                               single.tasks)
        lab = labels[0][valid][idx]
        with torch.no_grad():
            hs = par.hidden(m, one.tokens, one.pos, par.training_mask(one), {})[0]
            ws = par.target_weights(one, lab[None], (lab != IGNORE)[None])
        torch.testing.assert_close(h[0][valid][idx], hs, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(w_at[0][valid][idx][lab != IGNORE], ws)
        clean = torch.where(lab != IGNORE, lab, tok) if not shift else tok
        if not shift:          # the response holds the answer, then <eos> padding
            assert clean[-6:].tolist() == (list(a) + [V.eos] * 6)[:6]


def test_sampling_prefixes_have_no_branches():
    t = qa_turn(random.Random(2), 3)
    p = format_turn(V, t, with_target=False)
    assert not any(p.branch) and p.tokens[-1] == V.asst
    assert p.tokens == format_turn(V, alone(t)[0], with_target=False).tokens


def test_shapes_world_follow_ups_are_other_true_questions_of_the_same_scene():
    w = ShapesWorld("train", vqa_turns=4)
    kinds_seen, yes, no = set(), 0, 0
    for i in range(200):
        e = w.example(i, "vqa")
        fu = e.meta["followups"]
        assert 1 <= len(fu) <= 3 and e.meta["answer"] == e.target_text
        assert e.text not in [q for q, _ in fu]
        for q, a in fu:
            yes, no = yes + (a == "yes"), no + (a == "no")
        kinds_seen.add(e.kind)
    assert kinds_seen == set(QUESTION_KINDS)
    assert 0.35 < yes / (yes + no) < 0.65
    # the first question is the one-turn example's question: vqa_turns only adds turns
    assert w.example(7, "vqa").text == ShapesWorld("train").example(7, "vqa").text
    assert "followups" not in ShapesWorld("train").example(7, "vqa").meta
    with pytest.raises(ValueError, match="vqa_turns"):
        ShapesWorld("train", vqa_turns=0)


def test_extra_kinds_ask_the_hard_kinds_again_after_one_of_each():
    extra = ("relation", "compare", "relation")
    w9, w12 = ShapesWorld("train", vqa_turns=9), ShapesWorld("train", vqa_turns=12,
                                                              vqa_extra_kinds=extra)
    grew = 0
    for i in range(60):
        a, b = w9.example(i, "vqa"), w12.example(i, "vqa")
        fa, fb = a.meta["followups"], b.meta["followups"]
        # the same picture and first questions; the extra questions come after
        assert a.text == b.text and (a.image == b.image).all() and fb[:len(fa)] == fa
        grew += len(fb) - len(fa)
        if len(a.scene.objects) >= 2:          # relations can be asked
            assert len(fb) > len(fa)
            assert len({q for q, _ in fb}) == len(fb)
    assert grew > 60
    with pytest.raises(ValueError, match="unknown question kind"):
        ShapesWorld("train", vqa_turns=10, vqa_extra_kinds=("colour",))


def test_extra_kinds_config_is_checked():
    from unimm.data.worlds import DataConfig
    with pytest.raises(ValueError, match="data.vqa_turns = 11"):
        DataConfig(vqa_turns=9, vqa_extra_kinds=("relation", "compare"))
    with pytest.raises(ValueError, match="unknown question kind"):
        DataConfig(vqa_turns=11, vqa_extra_kinds=("relation", "colour"))
    assert DataConfig(vqa_turns=11, vqa_extra_kinds=("relation", "compare")).vqa_extra_kinds


# ---- edit branches: several edits of one source picture ---------------------------------------

def edit_turn(r, n_follow):
    def ids(lo, hi):
        return [r.randrange(V.n_text) for _ in range(r.randint(lo, hi))]

    def img():
        return [r.randrange(V.n_codes) for _ in range(V.n_image)]
    return Turn("edit", ids(1, 5), img(), None, img(),
                followups=tuple((ids(1, 5), img()) for _ in range(n_follow)))


def edits_alone(t: Turn) -> list[Turn]:
    return [Turn("edit", t.text, t.image, None, t.target_image)] + \
           [Turn("edit", q, t.image, None, c) for q, c in t.followups]


@pytest.mark.parametrize("uncond", [False, True])
def test_each_edit_branch_computes_what_its_edit_alone_computes(uncond):
    from unimm.paradigms.base import drop_condition
    par, m = Autoregressive(V), model(5)
    r = random.Random(1)
    turns = [edit_turn(r, 2), edit_turn(r, 0), edit_turn(r, 1)]
    if uncond:              # the guidance twin drops every instruction, keeps every target
        turns = [drop_condition(t) for t in turns]
    batch = collate([format_turn(V, t) for t in turns], V.pad)
    h = par.hidden(m, batch.tokens, batch.pos, par.training_mask(batch), {})
    n_codes = 0
    for b, t in enumerate(turns):
        valid = batch.valid[b]
        br = batch.branch[b][valid].tolist()
        pieces = edits_alone(t)
        for k, one in enumerate(pieces, start=1 if t.followups else 0):
            if uncond:
                assert one.text == []
            single = collate([format_turn(V, one)], V.pad)
            hs = par.hidden(m, single.tokens, single.pos, par.training_mask(single), {})[0]
            idx = [i for i, x in enumerate(br) if x in (0, k)]
            assert batch.tokens[b][valid][idx].tolist() == single.tokens[0].tolist()
            assert batch.pos[b][valid][idx].tolist() == single.pos[0].tolist()
            assert batch.loss[b][valid][idx].tolist() == single.loss[0].tolist()
            torch.testing.assert_close(h[b][valid][idx], hs, atol=2e-5, rtol=1e-4)
            n_codes += int(single.loss[0].sum())
    assert int(batch.loss.sum()) == n_codes     # every target image is learned, once


def test_shapes_world_edit_branches_are_other_edits_of_the_same_source():
    from unimm.data.shapes import HOLDOUT_PAIRS
    from unimm.data.shapes_judge import judge
    w1, w3 = ShapesWorld("train"), ShapesWorld("train", edit_turns=3)
    n_more = 0
    for i in range(80):
        a, e = w1.example(i, "edit"), w3.example(i, "edit")
        # the first edit is the one-edit example's: edit_turns only adds edits
        assert (a.text, a.scene, a.target_scene) == (e.text, e.scene, e.target_scene)
        fu, scenes = e.meta["followups"], e.meta["followup_scenes"]
        assert 1 <= len(fu) <= 2 and len(scenes) == len(fu)
        texts = [e.text] + [q for q, _ in fu]
        targets = [e.target_scene.key()] + [s.key() for s in scenes]
        assert len(set(texts)) == len(texts) and len(set(targets)) == len(targets)
        for (q, img), s in zip(fu, scenes):
            assert s != e.scene and judge(img).key() == s.key()
            assert not (s.pairs() & HOLDOUT_PAIRS)        # still never a hold-out target
        n_more += len(fu)
    assert n_more > 140
    assert "followups" not in a.meta
    with pytest.raises(ValueError, match="edit_turns"):
        ShapesWorld("train", edit_turns=0)


def test_edit_branches_config_is_checked():
    from unimm.data.worlds import DataConfig
    from unimm.runs import RunConfig
    with pytest.raises(ValueError, match="edit_turns = 0 is out of range"):
        DataConfig(edit_turns=0)
    with pytest.raises(ValueError, match="digits have no editing"):
        DataConfig(dataset="digits", edit_turns=2)
    with pytest.raises(ValueError, match="data.edit_turns = 1"):
        RunConfig(paradigm="masked", data=DataConfig(edit_turns=2))
    assert RunConfig(data=DataConfig(edit_turns=2)).data.edit_turns == 2
