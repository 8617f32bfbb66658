"""Our TokenModel's tensors <-> transformers' Janus names (the language model, its head and the
generation embeddings / aligner / head), shared by the Janus family adapter (janus.py) and the
converters both ways (interop/janus.py).

- embed / head rows [0, code_start) -> `language_model.embed_tokens` / `lm_head`;
- each block: fused `qkv` <-> `q_proj`, `k_proj`, `v_proj`; fused `gate_up` <-> `gate_proj`,
  `up_proj`; norms; `proj` <-> `o_proj`; `down` <-> `down_proj`; the final norm;
- `codes` (CodeMLP) <-> `generation_embeddings`, `generation_aligner` (fc1, hidden_layers.0),
  `generation_head` (proj_out, vision_head).
"""

from __future__ import annotations

import torch
from torch import Tensor


def blocks(n_layers: int):
    for i in range(n_layers):
        yield f"backbone.blocks.{i}.", f"model.language_model.layers.{i}."


def same_tensors(n_layers: int) -> list[tuple[str, str]]:
    """(our name, transformers' name) of every tensor that maps unchanged; the fused
    projections (qkv, gate_up) are split / joined by the two functions below."""
    pairs = [("embed.weight", "model.language_model.embed_tokens.weight"),
             ("head.weight", "lm_head.weight"),
             ("backbone.norm.weight", "model.language_model.norm.weight"),
             ("codes.embed.weight", "model.generation_embeddings.weight")]
    for ours, theirs in (("codes.align_in", "model.generation_aligner.fc1"),
                         ("codes.align_out", "model.generation_aligner.hidden_layers.0"),
                         ("codes.head_in", "model.generation_head.proj_out"),
                         ("codes.head_out", "model.generation_head.vision_head")):
        pairs += [(f"{ours}.weight", f"{theirs}.weight"), (f"{ours}.bias", f"{theirs}.bias")]
    for a, b in blocks(n_layers):
        pairs += [(a + "attn_norm.weight", b + "input_layernorm.weight"),
                  (a + "mlp_norm.weight", b + "post_attention_layernorm.weight"),
                  (a + "attn.proj.weight", b + "self_attn.o_proj.weight"),
                  (a + "mlp.down.weight", b + "mlp.down_proj.weight")]
    return pairs


def to_janus_state(state: dict[str, Tensor], m) -> dict[str, Tensor]:
    """Our state dict -> transformers' names (`m`: the model config)."""
    rows = [m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim, m.n_kv_heads * m.head_dim]
    out = {theirs: state[ours] for ours, theirs in same_tensors(m.n_layers)}
    for a, b in blocks(m.n_layers):
        for p, w in zip("qkv", state[a + "attn.qkv.weight"].split(rows)):
            out[b + f"self_attn.{p}_proj.weight"] = w
        gate, up = state[a + "mlp.gate_up.weight"].chunk(2)
        out[b + "mlp.gate_proj.weight"], out[b + "mlp.up_proj.weight"] = gate, up
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def from_janus_state(state: dict[str, Tensor], m) -> dict[str, Tensor]:
    """transformers' names -> ours (KeyError naming a missing tensor)."""
    out = {ours: state[theirs] for ours, theirs in same_tensors(m.n_layers)}
    for a, b in blocks(m.n_layers):
        out[a + "attn.qkv.weight"] = torch.cat([state[b + f"self_attn.{p}_proj.weight"]
                                                for p in "qkv"])
        out[a + "mlp.gate_up.weight"] = torch.cat([state[b + "mlp.gate_proj.weight"],
                                                   state[b + "mlp.up_proj.weight"]])
    return {k: v.detach().clone().contiguous() for k, v in out.items()}
