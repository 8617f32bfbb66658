"""Where text-to-image goes wrong: per-object errors of drawn scenes, and the teacher-forced
accuracy / colour mass of image codes by their role in an object (README, "What held
text-to-image near 0.6").

    python scripts/diagnose_t2i.py [RUN] [--split test] [--n 200] [--guidance 1.5]

RUN defaults to the shipped model. Prints:
- drawn scenes: full-scene accuracy by number of objects, and per object: right / wrong shape /
  wrong colour / wrong size / missing / extra;
- teacher-forced: argmax accuracy of image codes on background patches, on each object's first
  patch (raster order), its second, and the rest, conditional and guided; and at first patches
  the share of foreground probability on codes of the right colour (a code's colour is read
  off its decoded 4x4 patch).
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from unimm import Pipeline
from unimm.data.shapes import COLORS, render
from unimm.data.splits import ShapesWorld
from unimm.data.shapes_judge import judge_batch
from unimm.paradigms.base import format_turn
from unimm.paradigms.sequence import collate
from unimm.train.data import Encoder


def drawn(pipe, exs, guidance):
    judged = judge_batch(np.stack(pipe.draw([e.text for e in exs], guidance=guidance)))
    by_n, errs = collections.defaultdict(list), collections.Counter()
    for e, j in zip(exs, judged):
        t = e.target_scene
        by_n[len(t.objects)].append(t.key() == j.key())
        want, got = {o.cell: o for o in t.objects}, {o.cell: o for o in j.objects}
        for cell in set(want) | set(got):
            a, b = want.get(cell), got.get(cell)
            if b is None:
                errs["missing"] += 1
            elif a is None:
                errs["extra"] += 1
            else:
                errs["right" if a.key() == b.key() else "wrong"] += 1
                for f in ("shape", "color", "size"):
                    errs[f"wrong {f}"] += getattr(a, f) != getattr(b, f)
    acc = np.mean([x for v in by_n.values() for x in v])
    print(f"drawn: full scene {acc:.3f}; by objects "
          + ", ".join(f"{k}: {np.mean(v):.3f} ({len(v)})" for k, v in sorted(by_n.items())))
    print("objects:", dict(errs))


def code_colours(pipe) -> torch.Tensor:
    """(K,) index into COLORS of each code's dominant chromaticity, -1 for background codes."""
    tok, k = pipe.parts.image_tok, pipe.paradigm.vocab.n_codes
    gh, gw = tok.grid
    ids = torch.arange(k)
    ids = torch.cat([ids, torch.zeros((-k) % (gh * gw), dtype=torch.long)]).reshape(-1, gh, gw)
    pix = tok.decode(ids).astype(float)                                # (n, H, W, 3)
    p = pix.shape[1] // gh
    patches = pix.reshape(-1, gh, p, gw, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, p * p, 3)[:k]
    ref = np.array(list(COLORS.values()), float)
    ref = ref / ref.sum(-1, keepdims=True)
    out = []
    for q in patches:
        fg = q[q.sum(-1) > 60]
        if not len(fg):
            out.append(-1)
            continue
        near = ((fg / fg.sum(-1, keepdims=True))[:, None] - ref[None]) ** 2
        out.append(int(np.bincount(near.sum(-1).argmin(1), minlength=len(ref)).argmax()))
    return torch.tensor(out)


@torch.no_grad()
def code_logits(pipe, rows):
    """(R, N, K) code logits at each target image position of each packed row."""
    v, model, par = pipe.paradigm.vocab, pipe.model, pipe.paradigm
    b = collate(rows, v.pad)
    h = par.hidden(model, b.tokens, b.pos, par.training_mask(b), b.extra)
    out = []
    for r in range(len(rows)):
        tgt = b.tokens[r, 1:]
        idx = (b.loss[r, 1:] & (tgt >= v.code_start)).nonzero()[:, 0][-v.n_image:]
        out.append(model.logits(h[r, idx], v.code_start, v.code_start + v.n_codes).float())
    return torch.stack(out)


def teacher_forced(pipe, exs, guidance):
    v, par = pipe.paradigm.vocab, pipe.paradigm
    turns = Encoder(pipe.parts.text_tok, pipe.parts.image_tok).turns(exs)
    cond = code_logits(pipe, [format_turn(v, t) for t in turns])
    unc = code_logits(pipe, [par.unconditional(t, with_target=True) for t in turns])
    guided = unc + guidance * (cond - unc)
    tgt = torch.tensor([t.target_image for t in turns])
    colour = code_colours(pipe)
    names = list(COLORS)
    gh, gw = pipe.parts.image_tok.grid
    acc = {n: collections.Counter() for n in ("cond", "guided")}
    mass = collections.defaultdict(list)
    for i, e in enumerate(exs):
        role = ["background"] * v.n_image
        firsts = []
        for o in e.target_scene.objects:
            m = render(e.target_scene.with_objects([o])).sum(-1) > 0
            p = m.shape[0] // gh
            ks = np.nonzero(m.reshape(gh, p, gw, p).any((1, 3)).reshape(-1))[0]
            for j, k in enumerate(ks):
                role[k] = ("first", "second")[j] if j < 2 else "rest"
            firsts.append((int(ks[0]), names.index(o.color), len(e.target_scene.objects)))
        for name, lg in (("cond", cond[i]), ("guided", guided[i])):
            ok = lg.argmax(-1) == tgt[i]
            for k in range(v.n_image):
                acc[name][role[k] + " n"] += 1
                acc[name][role[k] + " ok"] += int(ok[k])
            for k, want, n_obj in firsts:
                p = lg[k].softmax(-1)
                mass[(name, n_obj)].append(float(p[colour == want].sum() / p[colour >= 0].sum()))
    for name, c in acc.items():
        print(f"teacher-forced argmax accuracy ({name}): " + ", ".join(
            f"{r} {c[r + ' ok'] / c[r + ' n']:.3f}" for r in ("background", "first", "second", "rest")))
    for name in ("cond", "guided"):
        per = {n: np.mean(x) for (nm, n), x in sorted(mass.items()) if nm == name}
        alln = np.mean([y for (nm, _), x in mass.items() if nm == name for y in x])
        print(f"first patch, right-colour share of foreground mass ({name}): {alln:.3f}; by objects "
              + ", ".join(f"{n}: {m:.3f}" for n, m in per.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--guidance", type=float, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    pipe = Pipeline.load(a.run)
    g = pipe.default_guidance if a.guidance is None else a.guidance
    world = ShapesWorld(a.split, pipe.cfg.data.world)
    exs = [world.t2i_example(i, geneval=False) for i in range(a.n)]
    print(f"{a.run or 'default model'}, {a.split}, {a.n} prompts, guidance {g}")
    drawn(pipe, exs, g)
    teacher_forced(pipe, exs, g)


if __name__ == "__main__":
    main()
