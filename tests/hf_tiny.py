"""Tiny random released-model checkpoints, built offline the way transformers' own model tests
build theirs (config classes + `save_pretrained`), for loading tests with no download:

- `tiny_janus(dir)`: a Janus(-Pro) folder in the HF-native layout (config.json,
  model.safetensors, generation_config.json, tokenizer files, processor and image-processor
  configs), as `deepseek-community/Janus-Pro-1B` is laid out, at toy sizes;
- `janus_original(hf_dir, dir)`: the same weights in DeepSeek's original `multi_modality`
  layout (their key names, fused SigLIP qkv, a `pytorch_model.bin`, VLChatProcessor configs);
- `tiny_emu3(dir)`: an Emu3 folder (visual tokens inside the text vocabulary).

Sizes follow ../shared/NOTES.md's pitfalls: aligner and generation-embedding widths equal the
text hidden size, VQ channel counts are multiples of 32, the VQ downsampling equals the patch
size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

JANUS_SPECIALS = {"bos": "<｜begin▁of▁sentence｜>", "eos": "<｜end▁of▁sentence｜>",
                  "pad": "<｜▁pad▁｜>", "image": "<image_placeholder>",
                  "boi": "<begin_of_image>", "eoi": "<end_of_image>"}
CORPUS = [
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using "
    "natural language.",
    "<|User|>: What do you see in this image? <|Assistant|>: A red circle and a blue square.",
    "a large red circle in the center and a small blue square at the top left",
    "How many shapes are there? Two. What color is the triangle? Green.",
]


def bpe_tokenizer(specials: list[str], vocab_size: int = 320, **kwargs):
    """A byte-level BPE fitted on a few sentences, with `specials` as special tokens, as
    transformers' PreTrainedTokenizerFast (`kwargs`: its special-token arguments)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def janus_config(vocab: int, ids: dict, hidden: int = 64, layers: int = 2, heads: int = 4,
                 image_size: int = 32, patch: int = 8, codes: int = 64):
    from transformers import JanusConfig
    n_img = (image_size // patch) ** 2
    n_up = patch.bit_length()                        # VQ downsampling 2^(n-1) = patch
    return JanusConfig(
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=hidden,
                         intermediate_size=2 * hidden + 32, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=512, rms_norm_eps=1e-6,
                         pad_token_id=ids["pad"], bos_token_id=ids["bos"],
                         eos_token_id=ids["eos"], tie_word_embeddings=False),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           image_size=image_size, patch_size=patch, num_image_tokens=n_img,
                           projection_dim=hidden, mlp_ratio=2.0),
        vq_config=dict(embed_dim=8, num_embeddings=codes, latent_channels=32, base_channels=32,
                       channel_multiplier=[1] * n_up, num_res_blocks=1,
                       projection_dim=hidden, image_token_embed_dim=hidden),
        image_token_id=ids["image"], tie_word_embeddings=False)


def tiny_janus(out: str | Path, seed: int = 0, image_size: int = 32, patch: int = 8) -> Path:
    """A random tiny Janus-Pro in the HF-native layout under `out` (created)."""
    from transformers import JanusForConditionalGeneration, JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil
    out = Path(out)
    s = JANUS_SPECIALS
    tok = bpe_tokenizer(list(s.values()), bos_token=s["bos"], eos_token=s["eos"],
                        pad_token=s["pad"], padding_side="left", add_bos_token=True,
                        extra_special_tokens={"image_token": s["image"], "boi_token": s["boi"],
                                              "eoi_token": s["eoi"]})
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in JANUS_SPECIALS.items()}
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(
        janus_config(len(tok), ids, image_size=image_size, patch=patch)).eval()
    g = model.generation_config
    g.bos_token_id, g.eos_token_id, g.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    g.generation_kwargs = {"boi_token_id": ids["boi"]}
    g.guidance_scale = 5.0
    g._from_model_config = False        # else from_pretrained rebuilds it from config.json
    model.save_pretrained(out, safe_serialization=True)
    images = JanusImageProcessorPil(size={"height": image_size, "width": image_size},
                                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                                    min_size=4)
    proc = JanusProcessor(images, tok, use_default_system_prompt=True,
                          num_image_tokens=(image_size // patch) ** 2)
    proc.save_pretrained(out)
    return out


def janus_processor(folder: str | Path):
    """transformers' processor of a tiny Janus folder (the PIL image processor: the default
    one needs torchvision, which has no CPU build here)."""
    from transformers import AutoTokenizer, JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil
    folder = Path(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    size = cfg["vision_config"]["image_size"]
    images = JanusImageProcessorPil(size={"height": size, "width": size},
                                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                                    min_size=4)
    n = cfg["vision_config"]["num_image_tokens"]
    return JanusProcessor(images, tok, use_default_system_prompt=True, num_image_tokens=n)


# ---- the original DeepSeek layout -------------------------------------------------------------
def _original_name(hf: str) -> str | None:
    """transformers' Janus parameter name -> DeepSeek's `multi_modality` name (the inverse of
    transformers' conversion script's renames); None for SigLIP's q/k/v (fused by the caller)."""
    import re
    rules = [
        (r"^lm_head\.weight$", "language_model.lm_head.weight"),
        (r"^model\.language_model\.", "language_model.model."),
        (r"^model\.vision_model\.embeddings\.position_embedding\.weight$",
         "vision_model.vision_tower.pos_embed"),
        (r"^model\.vision_model\.embeddings\.patch_embedding\.",
         "vision_model.vision_tower.patch_embed.proj."),
        (r"^model\.vision_model\.post_layernorm\.", "vision_model.vision_tower.norm."),
        (r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection_layer\.",
         r"vision_model.vision_tower.blocks.\1.attn.proj."),
        (r"^model\.vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.",
         r"vision_model.vision_tower.blocks.\1.norm\2."),
        (r"^model\.vision_model\.encoder\.layers\.(\d+)\.mlp\.",
         r"vision_model.vision_tower.blocks.\1.mlp."),
        (r"^model\.aligner\.fc1\.", "aligner.layers.0."),
        (r"^model\.aligner\.hidden_layers\.0\.", "aligner.layers.2."),
        (r"^model\.generation_aligner\.fc1\.", "gen_aligner.layers.0."),
        (r"^model\.generation_aligner\.hidden_layers\.0\.", "gen_aligner.layers.2."),
        (r"^model\.generation_head\.proj_out\.", "gen_head.output_mlp_projector."),
        (r"^model\.generation_head\.", "gen_head."),
        (r"^model\.generation_embeddings\.", "gen_embed."),
    ]
    if re.search(r"^model\.vision_model\..*self_attn\.[qkv]_proj\.", hf):
        return None
    for pat, rep in rules:
        if re.search(pat, hf):
            return re.sub(pat, rep, hf)
    if hf.startswith("model.vqmodel."):
        s = "gen_vision_model." + hf[len("model.vqmodel."):]
        s = re.sub(r"\.decoder\.up\.", ".decoder.conv_blocks.", s)
        s = re.sub(r"\.encoder\.down\.", ".encoder.conv_blocks.", s)
        s = re.sub(r"\.block\.(\d+)\.", r".res.\1.", s)
        for a, b in (("block_1", "0"), ("attn_1", "1"), ("block_2", "2")):
            s = s.replace(f".mid.{a}.", f".mid.{b}.")
        return s
    raise KeyError(hf)


def janus_original(hf_dir: str | Path, out: str | Path) -> Path:
    """Rewrite a tiny HF-layout Janus folder in DeepSeek's original layout: `pytorch_model.bin`
    with the original names, `config.json` of model_type multi_modality, VLChatProcessor
    `processor_config.json`, VLMImageProcessor `preprocessor_config.json`, the tokenizer."""
    import shutil
    from safetensors.torch import load_file
    hf_dir, out = Path(hf_dir), Path(out)
    out.mkdir(parents=True)
    sd = load_file(str(hf_dir / "model.safetensors"))
    orig = {}
    for k, v in sd.items():
        name = _original_name(k)
        if name is not None:
            orig[name] = v.clone()
    for k in sorted(k for k in sd if k.startswith("model.vision_model.")
                    and ".self_attn.q_proj." in k):
        layer, kind = k.split(".")[4], k.rsplit(".", 1)[1]
        parts = [sd[k.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
        orig[f"vision_model.vision_tower.blocks.{layer}.attn.qkv.{kind}"] = torch.cat(parts)
    orig["vision_model.vision_tower.pos_embed"] = orig["vision_model.vision_tower.pos_embed"][None]
    orig["gen_vision_model.quantize.codebook_used"] = torch.zeros(4)
    torch.save(orig, out / "pytorch_model.bin")
    cfg = json.loads((hf_dir / "config.json").read_text())
    t, vq = cfg["text_config"], cfg["vq_config"]
    hidden = t["hidden_size"]
    (out / "config.json").write_text(json.dumps({
        "model_type": "multi_modality", "torch_dtype": "float32",
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner", "params": {
            "depth": 2, "input_dim": cfg["vision_config"]["hidden_size"], "n_embed": hidden,
            "projector_type": "mlp_gelu"}},
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner", "params": {
            "depth": 2, "input_dim": vq["embed_dim"], "n_embed": hidden,
            "projector_type": "mlp_gelu"}},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head", "params": {
            "image_token_embed": hidden, "image_token_size": vq["num_embeddings"],
            "n_embed": hidden}},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": {
            "image_token_size": vq["num_embeddings"], "n_embed": vq["embed_dim"]}},
        "language_config": {k: t[k] for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "vocab_size", "rms_norm_eps")}
        | {"model_type": "llama"},
        # a custom tower states its shape (Janus-Pro names siglip_large_patch16_384)
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision", "params": {
            "image_size": cfg["vision_config"]["image_size"], "model_name": "siglip_tiny",
            "select_feature": "same", "select_layer": -1,
            **{k: cfg["vision_config"][k] for k in ("hidden_size", "num_hidden_layers",
                                                    "num_attention_heads", "patch_size",
                                                    "mlp_ratio")}}},
    }, indent=2))
    size = cfg["vision_config"]["image_size"]
    (out / "preprocessor_config.json").write_text(json.dumps({
        "background_color": [127, 127, 127], "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "VLMImageProcessor", "image_size": size, "min_size": 4,
        "processor_class": "VLChatProcessor", "rescale_factor": 1 / 255}))
    (out / "processor_config.json").write_text(json.dumps({
        "add_special_token": False, "ignore_id": -100, "image_tag": JANUS_SPECIALS["image"],
        "mask_prompt": True, "num_image_tokens": cfg["vision_config"]["num_image_tokens"],
        "processor_class": "VLChatProcessor", "sft_format": "deepseek"}))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (hf_dir / f).is_file():
            shutil.copy(hf_dir / f, out / f)
    return out


# ---- Emu3 -----------------------------------------------------------------------------------
EMU3_SPECIALS = {"pad": "<|endoftext|>", "bos": "<|extra_203|>", "eos": "<|extra_204|>",
                 "eol": "<|extra_200|>", "eof": "<|extra_201|>", "image": "<image>",
                 "wrapper": "<|image token|>", "boi": "<|image start|>", "eoi": "<|image end|>"}


def tiny_emu3(out: str | Path, seed: int = 0, codes: int = 32, hidden: int = 64) -> Path:
    """A random tiny Emu3 (Chat/Gen share the architecture) in the HF-native layout: visual
    tokens `<|visual token000000|>`... are the last `codes` ids of the text vocabulary; the VQ
    downsamples by 8 (the processor's fixed ratio)."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3Processor
    from transformers.models.emu3.image_processing_emu3 import Emu3ImageProcessor
    out = Path(out)
    s = EMU3_SPECIALS
    visual = [f"<|visual token{j:06d}|>" for j in range(codes)]
    tok = bpe_tokenizer(list(s.values()), vocab_size=400, bos_token=s["bos"],
                        eos_token=s["eos"], pad_token=s["pad"], padding_side="left",
                        extra_special_tokens={"image_token": s["image"], "boi_token": s["boi"],
                                              "eoi_token": s["eoi"],
                                              "image_wrapper_token": s["wrapper"],
                                              "eof_token": s["eof"]})
    tok.add_tokens(visual, special_tokens=True)      # the last ids, as Emu3's visual tokens
    vocab = tok.get_vocab()
    ids = {k: vocab[v] for k, v in s.items()}
    cfg = Emu3Config(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rope_theta=1e6, rms_norm_eps=1e-5,
                         pad_token_id=ids["pad"], bos_token_id=ids["bos"],
                         eos_token_id=ids["eos"], attention_dropout=0.1),
        vq_config=dict(codebook_size=codes, embed_dim=4, latent_channels=4, base_channels=32,
                       channel_multiplier=[1, 1, 1, 1], num_res_blocks=1,
                       temporal_downsample_factor=1, attn_resolutions=[], hidden_size=32,
                       num_attention_heads=1),
        vocabulary_map=vocab)
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(cfg).eval()
    g = model.generation_config
    g.bos_token_id, g.eos_token_id, g.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    g._from_model_config = False
    model.save_pretrained(out, safe_serialization=True)
    images = Emu3ImageProcessor(min_pixels=32 * 32, max_pixels=64 * 64,
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    Emu3Processor(images, tok).save_pretrained(out)
    return out
