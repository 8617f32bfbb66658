"""DeepSeek's original Janus / Janus-Pro layout (`model_type: multi_modality`, as
`deepseek-ai/Janus-Pro-1B` / `-7B` and most fine-tunes on the Hub ship it) -> transformers'
layout (`model_type: janus`), which `Pipeline.load`, `unimm serve --run` and transformers'
`JanusForConditionalGeneration.from_pretrained` read.

`unimm convert janus-original SRC OUT`. What it reads and writes:
- weights: `pytorch_model.bin` or its shards (`pytorch_model.bin.index.json`), which are
  pickles: read with `torch.load(weights_only=True)` only (tensors, no code), or
  `model*.safetensors` when the folder has them (preferred); renamed to transformers' names
  (the table below, after transformers' conversion script and DeepSeek's module names),
  SigLIP's fused `attn.qkv` split into q, k, v, the position embedding's batch axis dropped,
  the unused attention-pool head and the VQ's `codebook_used` counter dropped; written as
  safetensors shards of at most `shard_gb`, in their own dtype;
- config: `config.json` (language_config, vision_config, aligner / gen_* configs) -> a
  JanusConfig. The 7B release's language_config leaves hidden size, heads and intermediate
  size at Llama's defaults; the SigLIP tower is named (`siglip_large_patch16_384`) rather
  than sized, so its size comes from the name, or from the weights and the params a custom
  tower states; the VQ-VAE's shape is read off its weights;
- tokenizer files are copied; the image processor's settings (`preprocessor_config.json`,
  VLMImageProcessor) and the processor's (`processor_config.json`, VLChatProcessor: image
  tokens, image tag) become transformers' processor_config.json; generation_config.json
  gets the ids image generation needs (BOS, the pad token of the guidance rows,
  `<begin_of_image>`).

Name mapping (original -> transformers):
    language_model.model.X                 -> model.language_model.X
    language_model.lm_head.weight          -> lm_head.weight
    vision_model.vision_tower.patch_embed.proj    -> model.vision_model.embeddings.patch_embedding
    vision_model.vision_tower.pos_embed           -> model.vision_model.embeddings.position_embedding.weight
    vision_model.vision_tower.blocks.N.norm1|norm2 -> ...encoder.layers.N.layer_norm1|layer_norm2
    vision_model.vision_tower.blocks.N.attn.qkv    -> ...encoder.layers.N.self_attn.q_proj|k_proj|v_proj
    vision_model.vision_tower.blocks.N.attn.proj   -> ...encoder.layers.N.self_attn.projection_layer
    vision_model.vision_tower.blocks.N.mlp.fc1|fc2 -> ...encoder.layers.N.mlp.fc1|fc2
    vision_model.vision_tower.norm                 -> model.vision_model.post_layernorm
    aligner.layers.0|2 / gen_aligner.layers.0|2    -> model.aligner / model.generation_aligner .fc1|.hidden_layers.0
    gen_head.output_mlp_projector / .vision_head   -> model.generation_head.proj_out / .vision_head
    gen_embed                                      -> model.generation_embeddings
    gen_vision_model.X (conv_blocks.L.res.B, mid.0|1|2)
                                   -> model.vqmodel.X (down|up.L.block.B, mid.block_1|attn_1|block_2)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from torch import Tensor

from ..utils.io import read_json, write_json
from .janus import ConversionError, _new_folder

SIGLIP = {   # DeepSeek's tower names -> their shapes (janus/models/siglip_vit.py presets)
    "siglip_large_patch16_384": {"hidden_size": 1024, "num_hidden_layers": 24,
                                 "num_attention_heads": 16, "patch_size": 16, "mlp_ratio": 4.0},
}
LLAMA_DEFAULTS = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                  "vocab_size": 102400, "max_position_embeddings": 16384}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SPECIAL = {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
           "eoi_token": "<end_of_image>"}
PAD = "<｜▁pad▁｜>"


# ---- weights -------------------------------------------------------------------------------------
def read_weights(src: Path) -> dict[str, Tensor]:
    """Every tensor of an original folder: safetensors when present, else the pickled .bin
    shards through torch.load(weights_only=True) (tensors only: no code is run)."""
    from safetensors.torch import load_file
    src = Path(src)
    st = sorted(src.glob("*.safetensors"))
    if st:
        out = {}
        for f in st:
            out.update(load_file(str(f)))
        return out
    index = src / "pytorch_model.bin.index.json"
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
    elif (src / "pytorch_model.bin").is_file():
        files = ["pytorch_model.bin"]
    else:
        raise ConversionError(f"{src}: no pytorch_model.bin, shards or safetensors files")
    out = {}
    for f in files:
        try:
            part = torch.load(src / f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:   # noqa: BLE001 - weights_only refuses anything but tensors
            raise ConversionError(f"{src / f}: not a plain tensor checkpoint ({e})") from None
        if not isinstance(part, dict) or not all(torch.is_tensor(v) for v in part.values()):
            raise ConversionError(f"{src / f}: expected a dict of tensors")
        out.update(part)
    return out


_VISION = [(r"^vision_model\.vision_tower\.patch_embed\.proj\.",
            "model.vision_model.embeddings.patch_embedding."),
           (r"^vision_model\.vision_tower\.pos_embed$",
            "model.vision_model.embeddings.position_embedding.weight"),
           (r"^vision_model\.vision_tower\.norm\.", "model.vision_model.post_layernorm."),
           (r"^vision_model\.vision_tower\.blocks\.(\d+)\.norm([12])\.",
            r"model.vision_model.encoder.layers.\1.layer_norm\2."),
           (r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.proj\.",
            r"model.vision_model.encoder.layers.\1.self_attn.projection_layer."),
           (r"^vision_model\.vision_tower\.blocks\.(\d+)\.mlp\.",
            r"model.vision_model.encoder.layers.\1.mlp.")]
_HEADS = [(r"^aligner\.layers\.0\.", "model.aligner.fc1."),
          (r"^aligner\.layers\.2\.", "model.aligner.hidden_layers.0."),
          (r"^gen_aligner\.layers\.0\.", "model.generation_aligner.fc1."),
          (r"^gen_aligner\.layers\.2\.", "model.generation_aligner.hidden_layers.0."),
          (r"^gen_head\.output_mlp_projector\.", "model.generation_head.proj_out."),
          (r"^gen_head\.vision_head\.", "model.generation_head.vision_head."),
          (r"^gen_embed\.", "model.generation_embeddings."),
          (r"^language_model\.lm_head\.weight$", "lm_head.weight"),
          (r"^language_model\.model\.", "model.language_model.")]
_DROPPED = (r"^vision_model\.vision_tower\.attn_pool\.", r"\.quantize\.codebook_used$")


def _vq_name(name: str) -> str:
    s = "model.vqmodel." + name[len("gen_vision_model."):]
    s = re.sub(r"\.encoder\.conv_blocks\.", ".encoder.down.", s)
    s = re.sub(r"\.decoder\.conv_blocks\.", ".decoder.up.", s)
    s = re.sub(r"\.res\.(\d+)\.", r".block.\1.", s)
    for a, b in (("0", "block_1"), ("1", "attn_1"), ("2", "block_2")):
        s = s.replace(f".mid.{a}.", f".mid.{b}.")
    return s


def convert_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Original names -> transformers' (see the module notes); every tensor accounted for."""
    out, unknown = {}, []
    for k, v in state.items():
        if any(re.search(p, k) for p in _DROPPED):
            continue
        m = re.match(r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", k)
        if m:
            pre = f"model.vision_model.encoder.layers.{m.group(1)}.self_attn."
            for p, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"{pre}{p}.{m.group(2)}"] = part.contiguous()
            continue
        if k.startswith("gen_vision_model."):
            out[_vq_name(k)] = v
            continue
        for pat, rep in _VISION + _HEADS:
            if re.search(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise ConversionError(f"tensors with no place in transformers' Janus: {unknown[:5]}")
    pos = "model.vision_model.embeddings.position_embedding.weight"
    if pos in out and out[pos].dim() == 3:
        out[pos] = out[pos].squeeze(0)
    return out


# ---- config --------------------------------------------------------------------------------------
def _params(cfg: dict, name: str) -> dict:
    return ((cfg.get(name) or {}).get("params")) or {}


def janus_config(cfg: dict, state: dict[str, Tensor], tok_ids: dict[str, int]) -> dict:
    """A JanusConfig dict (transformers' config.json) of an original config + its weights."""
    lang = {k: v for k, v in (cfg.get("language_config") or {}).items()
            if k not in ("model_type", "torch_dtype", "architectures")}
    text = {**LLAMA_DEFAULTS, **lang}
    text.setdefault("num_key_value_heads", text["num_attention_heads"])
    text.update(model_type="llama", pad_token_id=tok_ids.get("pad"), tie_word_embeddings=False,
                bos_token_id=tok_ids.get("bos"), eos_token_id=tok_ids.get("eos"))
    if "rope_theta" in text:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": text.pop("rope_theta")}
    vp = _params(cfg, "vision_config")
    tower = dict(SIGLIP.get(vp.get("model_name"), {}))
    tower.update({k: vp[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "patch_size", "mlp_ratio") if k in vp})
    if "num_attention_heads" not in tower:
        raise ConversionError(f"vision tower {vp.get('model_name')!r}: unknown shape; known "
                              f"towers: {', '.join(SIGLIP)} (or give hidden_size, "
                              f"num_attention_heads ... in vision_config.params)")
    pos = state["vision_model.vision_tower.pos_embed"]
    patch = state["vision_model.vision_tower.patch_embed.proj.weight"]
    blocks = {int(m.group(1)) for k in state
              if (m := re.match(r"^vision_model\.vision_tower\.blocks\.(\d+)\.", k))}
    fc1 = state["vision_model.vision_tower.blocks.0.mlp.fc1.weight"]
    image_size = vp.get("image_size", 384)
    vision = dict(hidden_size=pos.shape[-1], num_hidden_layers=len(blocks),
                  num_attention_heads=tower["num_attention_heads"], patch_size=patch.shape[-1],
                  mlp_ratio=fc1.shape[0] / pos.shape[-1], image_size=image_size,
                  num_image_tokens=(image_size // patch.shape[-1]) ** 2,
                  projection_dim=_params(cfg, "aligner_config").get("n_embed", text["hidden_size"]),
                  depth=_params(cfg, "aligner_config").get("depth", 2))
    emb = state["gen_vision_model.quantize.embedding.weight"]
    downs = {int(m.group(1)) for k in state
             if (m := re.match(r"^gen_vision_model\.encoder\.conv_blocks\.(\d+)\.", k))}
    conv_in = state["gen_vision_model.encoder.conv_in.weight"]
    base = conv_in.shape[0]
    mult = [state[f"gen_vision_model.encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // base
            for i in sorted(downs)]
    res = {int(m.group(1)) for k in state
           if (m := re.match(r"^gen_vision_model\.encoder\.conv_blocks\.0\.res\.(\d+)\.", k))}
    vq = dict(embed_dim=emb.shape[1], num_embeddings=emb.shape[0],
              latent_channels=state["gen_vision_model.quant_conv.weight"].shape[1],
              base_channels=base, channel_multiplier=mult, num_res_blocks=len(res),
              projection_dim=_params(cfg, "gen_aligner_config").get("n_embed",
                                                                    text["hidden_size"]),
              image_token_embed_dim=_params(cfg, "gen_head_config").get(
                  "image_token_embed", text["hidden_size"]))
    return {"model_type": "janus", "text_config": text, "vision_config": vision,
            "vq_config": vq, "image_token_id": tok_ids["image"], "tie_word_embeddings": False}


def _token_ids(src: Path) -> dict[str, int]:
    from tokenizers import Tokenizer
    if not (src / "tokenizer.json").is_file():
        raise ConversionError(f"{src}: no tokenizer.json")
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    names = {}
    for f in ("special_tokens_map.json", "tokenizer_config.json"):
        if (src / f).is_file():
            d = read_json(src / f)
            for role in ("bos", "eos", "pad"):
                v = d.get(f"{role}_token")
                v = v.get("content") if isinstance(v, dict) else v
                if isinstance(v, str):
                    names[role] = v
    names.setdefault("pad", PAD)
    names.update(image=SPECIAL["image_token"], boi=SPECIAL["boi_token"],
                 eoi=SPECIAL["eoi_token"])
    ids = {r: tok.token_to_id(t) for r, t in names.items()}
    missing = [names[r] for r, i in ids.items() if i is None]
    if missing:
        raise ConversionError(f"{src}: the tokenizer lacks {missing}")
    return ids


# ---- writing -------------------------------------------------------------------------------------
def _write_shards(state: dict[str, Tensor], out: Path, shard_gb: float) -> None:
    from safetensors.torch import save_file
    limit, shards, cur, size = shard_gb * 2**30, [], {}, 0
    for k in sorted(state):
        n = state[k].numel() * state[k].element_size()
        if cur and size + n > limit:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = state[k].contiguous(), size + n
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, sh in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(sh, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    write_json(out / "model.safetensors.index.json",
               {"metadata": {"total_size": total}, "weight_map": weight_map})


def convert(src: str | Path, out: str | Path, shard_gb: float = 5.0) -> Path:
    """Write the transformers-layout folder of an original Janus folder (see the notes)."""
    src, out = Path(src), Path(out)
    cfg = read_json(src / "config.json") if (src / "config.json").is_file() else None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "multi_modality":
        raise ConversionError(f"{src} is not DeepSeek's original Janus layout (config.json with "
                              f"model_type 'multi_modality')")
    state = read_weights(src)
    ids = _token_ids(src)
    config = janus_config(cfg, state, ids)
    hf_state = convert_state(state)
    pre = read_json(src / "preprocessor_config.json") if \
        (src / "preprocessor_config.json").is_file() else {}
    proc = read_json(src / "processor_config.json") if \
        (src / "processor_config.json").is_file() else {}
    size = pre.get("image_size", config["vision_config"]["image_size"])
    image_proc = {"image_processor_type": "JanusImageProcessor", "do_resize": True,
                  "size": {"height": size, "width": size}, "resample": 3,
                  "do_rescale": True, "rescale_factor": pre.get("rescale_factor", 1 / 255),
                  "do_normalize": pre.get("do_normalize", True),
                  "image_mean": pre.get("image_mean", [0.5, 0.5, 0.5]),
                  "image_std": pre.get("image_std", [0.5, 0.5, 0.5]),
                  "min_size": pre.get("min_size", 14), "do_pad": True}
    with _new_folder(out) as tmp:
        tmp.mkdir(parents=True)
        _write_shards(hf_state, tmp, shard_gb)
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", {
            "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
            "generation_kwargs": {"boi_token_id": ids["boi"]}, "guidance_scale": 5.0,
            "temperature": 1.0})
        write_json(tmp / "processor_config.json", {
            "processor_class": "JanusProcessor", "image_processor": image_proc,
            "num_image_tokens": proc.get("num_image_tokens",
                                         config["vision_config"]["num_image_tokens"]),
            "use_default_system_prompt": True})
        for f in TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copy(src / f, tmp / f)
        tc = read_json(tmp / "tokenizer_config.json") if \
            (tmp / "tokenizer_config.json").is_file() else {}
        tc.update(SPECIAL)
        tc.setdefault("pad_token", PAD)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False))
    return out


__all__ = ["convert", "convert_state", "janus_config", "read_weights"]
