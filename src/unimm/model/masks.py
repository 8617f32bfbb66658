"""Paradigm-neutral attention masks: pure functions returning boolean "may attend" tensors.

Convention shared by every builder and by `Backbone.forward`:
- A mask has shape (t, s) or (b, t, s); True means query i may attend to key j.
- The t queries are the *last* t of the s keys: query i sits at absolute index s - t + i.
  Without a KV cache t == s; with one, s = start + t and the queries are [start, start + t).
- Every builder keeps the diagonal (each query sees its own key), so no query row is ever
  fully masked: a fully masked row makes softmax 0/0, which some SDPA backends turn into NaN.
  Padding queries therefore attend only to themselves; their outputs are finite and ignored.

Letters: b batch, t queries, s keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _query_index(t: int, s: int, device) -> Tensor:
    return torch.arange(s - t, s, device=device)  # (t,) absolute index of each query


def causal_mask(t: int, s: int | None = None, *, offset: int | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """Bool (t, s): query at absolute index q attends keys j <= q.

    Defaults: with `s` given the queries are its last t keys (offset = s - t); with only
    `offset` given, s = offset + t; with neither, a square (t, t) lower triangle."""
    if s is None:
        offset = 0 if offset is None else offset
        s = offset + t
    elif offset is None:
        offset = s - t
    q = torch.arange(offset, offset + t, device=device)  # (t,)
    return torch.arange(s, device=device) <= q[:, None]  # (t, s)


def span_ids_from_ranges(length: int, ranges: Sequence[tuple[int, int]],
                         device: torch.device | str | None = None) -> Tensor:
    """Long (length,): 0 outside the ranges, k for the k-th [start, stop) range (1-based)."""
    ids = torch.zeros(length, dtype=torch.long, device=device)
    for k, (a, b) in enumerate(ranges, start=1):
        if not 0 <= a <= b <= length:
            raise ValueError(f"span [{a}, {b}) does not fit in a sequence of length {length}")
        ids[a:b] = k
    return ids


def span_mask(span_ids: Tensor, t: int | None = None) -> Tensor:
    """Causal everywhere, bidirectional inside spans (Transfusion arXiv:2408.11039, Show-o).

    span_ids: Long (s,) or (b, s) over all s keys; 0 = ordinary causal token, equal positive
    ids = one bidirectional span (e.g. an image). Returns Bool (t, s) or (b, t, s) for the last
    t queries (default t = s): causal, plus query and key in the same span."""
    s = span_ids.shape[-1]
    t = s if t is None else t
    q = _query_index(t, s, span_ids.device)
    causal = torch.arange(s, device=span_ids.device) <= q[:, None]  # (t, s)
    q_ids = span_ids[..., q, None]  # (..., t, 1)
    same = (q_ids == span_ids[..., None, :]) & (q_ids > 0)  # (..., t, s)
    return causal | same


def same_branch(branch: Tensor) -> Tensor:
    """Bool (b, s, s) from branch ids (b, s): key j is visible to query i when it lies in the
    shared prefix (id 0) or in the query's own branch. Keeps the diagonal; combine with `&`."""
    return (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])


def and_padding(mask: Tensor, key_valid: Tensor) -> Tensor:
    """Bool (b, t, s): `mask` (t, s) or (b, t, s) with invalid keys removed, diagonal kept.

    key_valid: Bool (b, s), False for padding keys (e.g. left padding of shorter prompts in
    a batch, or the dropped caption of the unconditional CFG row)."""
    t, s = mask.shape[-2:]
    out = mask & key_valid[:, None, :]  # (b, t, s)
    q = _query_index(t, s, mask.device)
    out[:, torch.arange(t, device=mask.device), q] = True  # a padded query sees itself
    return out
