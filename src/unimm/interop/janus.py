"""Our autoregressive runs <-> transformers' `JanusForConditionalGeneration`, both directions.

A run converts when it is laid out the way Janus is (`janus_problems` lists what is not):
paradigm "ar", 1-D rotary positions (`model.rope_sections = [head_dim / 2, 0, 0]`), no learned
cell embeddings (`image_pos = "none"`), Janus-style code MLPs (`code_mlp` > 0), no QK-norm, and
Janus's unconditional rows for guidance (`ar.uncond = "pad"`). `configs/janus_compat.toml` is
such a run.

The mapping (ours -> transformers):
- `embed` / `head` rows [0, code_start) (text + specials) -> `language_model.embed_tokens` /
  `lm_head` (Janus's text vocabulary is exactly our text + special tokens, same ids);
- each block: fused `qkv` -> `q_proj`, `k_proj`, `v_proj`; fused `gate_up` -> `gate_proj`,
  `up_proj`; norms, `proj` -> `o_proj`, `down` -> `down_proj`; the final norm;
- `codes` (CodeMLP) -> `generation_embeddings`, `generation_aligner` (fc1, hidden_layers.0),
  `generation_head` (proj_out, vision_head).
Janus's SigLIP encoder, its aligner and its VQ-VAE have no counterpart in an AR run (which reads
and writes images as codes of our own tokenizer): they are written as transformers initialises
them and ignored on the way back. Our tokenizers and run config travel in `unimm/` inside the
Janus folder, so `from_janus` rebuilds the run exactly.

Guidance: transformers' batched CFG processor computes uncond + s (cond - uncond), as we do, so
Janus's `guidance_scale` is our guidance; Janus applies it only for s > 1 (its image mode
always runs the two rows).
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..paradigms.base import Turn, format_turn
from ..paradigms.sequence import SPECIALS, Vocab, collate
from ..pipeline import default_run_dir
from ..runs import build_parts, load_config, load_run, save_config, save_run_weights
from ..runs.families import janus_names
from ..tokenizers.image import load_image_tokenizer
from ..tokenizers.text import TextTokenizer

UNIMM_DIR = "unimm"           # our run config + tokenizers inside a converted Janus folder


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why and what is accepted."""


def janus_problems(cfg) -> list[str]:
    """Why a run config is not Janus-compatible (empty when it is)."""
    out = []
    pairs = cfg.model.head_dim // 2
    if cfg.paradigm != "ar":
        out.append(f"paradigm is {cfg.paradigm!r}; Janus generates autoregressively ('ar')")
    if tuple(cfg.model.rope_sections) != (pairs, 0, 0):
        out.append(f"model.rope_sections is {list(cfg.model.rope_sections)}; Janus (Llama) "
                   f"uses 1-D rotary positions: [{pairs}, 0, 0]")
    if cfg.model.image_pos != "none":
        out.append(f"model.image_pos is {cfg.model.image_pos!r}; Janus has no learned cell "
                   f"embeddings ('none')")
    if cfg.model.code_mlp <= 0:
        out.append("model.code_mlp is 0; Janus embeds and predicts codes with MLPs "
                   "(code_mlp > 0)")
    if cfg.model.qk_norm:
        out.append("model.qk_norm is on; Llama has no QK-norm")
    ar = cfg.paradigm_config if cfg.paradigm == "ar" else None
    if ar is not None and ar.uncond != "pad":
        out.append(f"ar.uncond is {ar.uncond!r}; Janus's guidance rows pad the prompt ('pad')")
    if ar is not None and ar.input_images != "causal":
        out.append(f"ar.input_images is {ar.input_images!r}; Janus reads images causally "
                   f"('causal')")
    return out


def _vq_channels(patch: int) -> list[int]:
    """A channel multiplier list whose downsampling 2^(n-1) equals the patch size."""
    n = patch.bit_length()
    if 1 << (n - 1) != patch:
        raise ConversionError(f"Janus's VQ-VAE downsamples by powers of two; the image tokenizer's "
                              f"patch size {patch} is not one")
    return [1] * n


def janus_config(cfg, vocab: Vocab, image_size: int):
    """The transformers JanusConfig of a Janus-compatible run."""
    from transformers import JanusConfig
    m = cfg.model
    grid_h, grid_w = vocab.grid
    if grid_h != grid_w or image_size % grid_h:
        raise ConversionError(f"Janus needs a square code grid dividing the image: "
                              f"{grid_h}x{grid_w} codes, {image_size}px")
    patch = image_size // grid_h
    text = dict(model_type="llama", vocab_size=vocab.code_start, hidden_size=m.dim,
                intermediate_size=m.mlp_hidden, num_hidden_layers=m.n_layers,
                num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                head_dim=m.head_dim, max_position_embeddings=m.max_seq_len,
                rms_norm_eps=m.norm_eps, rope_parameters={"rope_type": "default",
                                                          "rope_theta": m.rope_theta},
                attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
                hidden_act="silu", pad_token_id=vocab.pad, bos_token_id=vocab.bos,
                eos_token_id=vocab.eos)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=patch, num_image_tokens=vocab.n_image,
                  projection_dim=m.dim, mlp_ratio=2.0)
    vq = dict(embed_dim=cfg.model.code_mlp, num_embeddings=vocab.n_codes, latent_channels=32,
              base_channels=32, channel_multiplier=_vq_channels(patch), num_res_blocks=1,
              projection_dim=m.dim, image_token_embed_dim=m.dim, num_hidden_layers=2,
              hidden_act="gelu")
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=vocab.special("<mask>"), tie_word_embeddings=False)


def to_janus_state(state: dict[str, Tensor], cfg, vocab: Vocab) -> dict[str, Tensor]:
    """Our TokenModel state dict -> the language-model and generation-head part of a Janus
    state dict (transformers names; runs/families/janus_names.py)."""
    return janus_names.to_janus_state(state, cfg.model)


def from_janus_state(state: dict[str, Tensor], cfg) -> dict[str, Tensor]:
    """The inverse of to_janus_state (Janus's vision encoder and VQ-VAE are not read)."""
    try:
        return janus_names.from_janus_state(state, cfg.model)
    except KeyError as e:
        raise ConversionError(f"not a Janus checkpoint of this shape: missing {e.args[0]}") from None


def _check_convertible(parts) -> None:
    problems = janus_problems(parts.cfg)
    if problems:
        raise ConversionError("this run is not Janus-compatible:\n  - " + "\n  - ".join(problems)
                              + "\n(configs/janus_compat.toml is a compatible layout)")
    if len(parts.model.extras):
        raise ConversionError(f"the model has paradigm modules {list(parts.model.extras)} "
                              f"that Janus has no place for")


def build_janus(parts):
    """A transformers JanusForConditionalGeneration holding a loaded run's weights (eval mode,
    generation config set for image mode)."""
    from transformers import JanusForConditionalGeneration
    _check_convertible(parts)
    v = parts.vocab
    jcfg = janus_config(parts.cfg, v, parts.image_tok.image_size)
    torch.manual_seed(0)                 # the unused SigLIP / VQ-VAE parts: reproducible
    janus = JanusForConditionalGeneration(jcfg).eval()
    ours = to_janus_state(parts.model.state_dict(), parts.cfg, v)
    missing = set(ours) - set(janus.state_dict())
    if missing:
        raise ConversionError(f"transformers' Janus has no parameters {sorted(missing)[:4]}")
    janus.load_state_dict(ours, strict=False)
    g = janus.generation_config
    g.bos_token_id, g.pad_token_id, g.eos_token_id = v.bos, v.pad, v.eos
    g.generation_kwargs = {"boi_token_id": v.boi}
    return janus


def to_janus(run: str | Path | None, out: str | Path, device: str = "cpu") -> Path:
    """Convert a saved run into a transformers Janus folder (save_pretrained: safetensors +
    config.json), with our config and tokenizers under unimm/. Written to a temporary folder
    and renamed, so a failure leaves nothing behind."""
    parts = load_run(run, device=device) if run is not None else _default_parts(device)
    janus = build_janus(parts)
    with _new_folder(out) as tmp:
        janus.save_pretrained(tmp, safe_serialization=True)
        _save_unimm_side(parts, tmp / UNIMM_DIR)
    return Path(out)


@contextmanager
def _new_folder(out: str | Path):
    """Yield a not-yet-existing temporary sibling of `out` to fill; renamed to `out` when the
    block succeeds, removed in any case (a failure leaves nothing behind). Refuses an
    existing `out`."""
    out = Path(out)
    if out.exists():
        raise ConversionError(f"{out} exists; choose a new folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _default_parts(device):
    return load_run(default_run_dir(), device=device)


def _save_unimm_side(parts, where: Path) -> None:
    where.mkdir(parents=True)
    save_config(parts.cfg, parts.vocab, where)
    parts.text_tok.save(where / "tokenizer" / "text")
    parts.image_tok.save(where / "tokenizer" / "image")


def from_janus(janus_dir: str | Path, out: str | Path) -> Path:
    """Convert a Janus folder written by `to_janus` (or one of the same layout, with our
    config and tokenizers under unimm/) back into a run folder."""
    janus_dir, out = Path(janus_dir), Path(out)
    side = janus_dir / UNIMM_DIR
    if not (side / "config.json").is_file():
        raise ConversionError(f"{janus_dir} has no {UNIMM_DIR}/config.json: from_janus needs the "
                              f"run config and tokenizers that to_janus stores there")
    files = sorted(janus_dir.glob("model*.safetensors"))
    if not files:
        raise ConversionError(f"{janus_dir} has no model*.safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(f))
    cfg = load_config(side)
    text_tok = TextTokenizer.load(side / "tokenizer" / "text")
    image_tok = load_image_tokenizer(side / "tokenizer" / "image")
    parts = build_parts(cfg, text_tok, image_tok)
    _check_convertible(parts)
    ours = from_janus_state(state, cfg)
    want = parts.model.state_dict()
    bad = [k for k in want if k not in ours or ours[k].shape != want[k].shape]
    if bad:
        raise ConversionError(f"Janus weights do not fit the run config: {bad[:4]}")
    parts.model.load_state_dict(ours)
    with _new_folder(out) as tmp:
        shutil.copytree(side, tmp)
        save_run_weights(parts, parts.model, tmp)
    return out


# ---- running the same work on transformers' Janus -----------------------------------------------

@torch.inference_mode()
def janus_generate_codes(janus, v: Vocab, turns: list[Turn], guidance: float) -> Tensor:
    """Greedy text-to-image on transformers' Janus with our prompt layout -> (B, N) codes.
    `guidance` (uncond + g (cond - uncond), as ours) must exceed 1: Janus's image mode always
    runs the guidance rows and applies the scale only above 1."""
    if guidance <= 1:
        raise ConversionError(f"transformers' Janus applies guidance only above 1; got {guidance}")
    if any(t.task != "t2i" for t in turns):
        raise ConversionError("transformers' Janus generates from text prompts only (t2i)")
    batch = collate([format_turn(v, t, with_target=False) for t in turns], v.pad, left=True)
    return janus.generate(input_ids=batch.tokens, attention_mask=batch.valid.long(),
                          generation_mode="image", do_sample=False, guidance_scale=guidance)


@torch.inference_mode()
def janus_embeds(janus, v: Vocab, tokens: Tensor) -> Tensor:
    """Input embeddings of our token layout on Janus's own modules: text and specials through
    `embed_tokens`, image codes through `generation_embeddings` + `generation_aligner`."""
    is_code = tokens >= v.code_start
    x = janus.get_input_embeddings()(tokens.clamp(max=v.code_start - 1))
    if bool(is_code.any()):
        x[is_code] = janus.prepare_embeddings_for_image_generation(tokens[is_code] - v.code_start)
    return x


@torch.inference_mode()
def janus_answer(janus, v: Vocab, turns: list[Turn], max_new: int) -> list[list[int]]:
    """Greedy answers on transformers' Janus (its language model and lm_head) for turns in our
    understanding layout, the image given as codes -> token ids without <eos>, as ours."""
    prefixes = [format_turn(v, t, with_target=False) for t in turns]
    batch = collate(prefixes, v.pad, left=True)
    emb = janus_embeds(janus, v, batch.tokens)
    mask = batch.valid.long()
    banned = [v.special(s) for s in SPECIALS if s != "<eos>"]
    out = janus.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new,
                         do_sample=False, eos_token_id=v.eos, pad_token_id=v.pad,
                         suppress_tokens=banned, generation_mode="text")
    answers = []
    for row in out.tolist():
        ids = []
        for t in row:
            if t == v.eos:
                break
            ids.append(t)
        answers.append(ids)
    return answers
