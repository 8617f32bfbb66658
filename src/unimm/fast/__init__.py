"""CPU speed paths for the plain model (unimm.model).

decode.py     DecodeStep: the one-token decoding step and prompt fill compiled by AOTInductor
              (or torch.compile), libraries kept on disk, applied to a KVCache
kernels.py    native CPU kernels built on first use (csrc/decode_attention.cpp)
"""
