"""Reference decoders for tests: recompute the whole sequence for every new token (no cache,
no batching), through the paradigm's own embedding and attention, to compare fast paths with."""

import torch

from unimm.paradigms.base import format_turn


@torch.no_grad()
def greedy_text_by_recompute(paradigm, model, turn, steps: int = 8, extra=None) -> list[int]:
    """Greedy answer (text tokens until <eos>) to one turn."""
    v = paradigm.vocab
    p = format_turn(v, turn, with_target=False)
    toks, pos, span = list(p.tokens), list(p.pos), list(p.span)
    ref = []
    for _ in range(steps):
        sp = torch.tensor([span])
        att = paradigm.attention(sp, torch.ones_like(sp, dtype=torch.bool))
        h = paradigm.hidden(model, torch.tensor([toks]), torch.tensor([pos]), att,
                            extra or {})[0, -1]
        lg = model.logits(h, 0, v.text_end)
        lg[v.n_text:] = float("-inf")
        lg[v.eos] = model.logits(h, v.eos, v.eos + 1)[0]
        tok = int(lg.argmax())
        if tok == v.eos:
            break
        ref.append(tok)
        n = len(toks)
        toks.append(tok)
        pos.append((n, n, n))
        span.append(0)
    return ref
