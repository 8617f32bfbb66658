"""The shared backbone: embeddings + attention mask -> hidden states (no paradigm inside).

backbone.py  BackboneConfig, Backbone (forward, new_cache, num_params, flops_per_token)
layers.py    RMSNorm, Attention, SwiGLU, Block: the one copy of each block
rotary.py    M-RoPE over (seq, row, col) positions; text (t, t, t) and image (t, r, c) helpers
cache.py     KVCache: preallocated, written at an explicit start, rows selectable
masks.py     boolean "may attend" builders: causal, span (bidirectional images), padding
"""

from unimm.model.backbone import Backbone, BackboneConfig
from unimm.model.cache import KVCache
from unimm.model.layers import RMSNorm
from unimm.model.masks import and_padding, causal_mask, span_ids_from_ranges, span_mask
from unimm.model.rotary import positions_1d, positions_image

__all__ = [
    "Backbone", "BackboneConfig", "KVCache", "RMSNorm", "and_padding", "causal_mask",
    "positions_1d", "positions_image", "span_ids_from_ranges", "span_mask",
]
