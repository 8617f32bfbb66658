"""The model: the shared backbone (embeddings + attention mask -> hidden states, no paradigm
inside), the unified token model around it, and the ViT image encoder. A plain transformer:
speed paths live in unimm.fast and plug into the seams below.

backbone.py  BackboneConfig, Backbone (forward, new_cache, num_params, flops_per_token)
layers.py    RMSNorm, Attention, SwiGLU, Block: the one copy of each block
ops.py       the table of the blocks' operations (linear, swiglu, attention: plain PyTorch)
             and of the caches' pool factory; loads unimm.fast
rotary.py    M-RoPE over (seq, row, col) positions; text (t, t, t) and image (t, r, c) helpers
cache.py     KVCache: preallocated, written at an explicit start, rows selectable
masks.py     boolean "may attend" builders: causal, span (bidirectional images), padding
unified.py   TokenModel: token / code embeddings, the backbone, a vocabulary-slice head,
             one-token decoding (decode_logits)
vit.py       ViT image encoder (decoupled paradigm, contrastive pre-training)

Seams for unimm.fast (everything works without it, more slowly):
- ops.py: `linear`, `swiglu`, `attention` and `new_pool`, replaced by `unimm.fast.install()`
  (CPU fast paths that fall back to the plain functions; sampler caches' memory pools).
- `TokenModel.decoder` (unified.py) and `Backbone.filler` (backbone.py): a compiled decoding
  step and prompt fill, declared None and set by `TokenModel.compile_decode`
  (-> `unimm.fast.compile_decode`).
- `KVCache.sync` and `KVCache.pool` (cache.py): a speed path that keeps the newest slots
  elsewhere (the compiled steps' window) writes them back when anything else touches the cache;
  the memory a pooled cache gives back.

Importing this package installs unimm.fast when it is there and the environment variable
UNIMM_FAST is not "0" (`ops.load_fast`).
"""

from unimm.model import ops
from unimm.model.backbone import Backbone, BackboneConfig
from unimm.model.cache import KVCache
from unimm.model.layers import RMSNorm
from unimm.model.masks import and_padding, causal_mask, span_ids_from_ranges, span_mask
from unimm.model.rotary import positions_1d, positions_image

ops.load_fast()

__all__ = [
    "Backbone", "BackboneConfig", "KVCache", "RMSNorm", "and_padding", "causal_mask",
    "positions_1d", "positions_image", "span_ids_from_ranges", "span_mask",
]
