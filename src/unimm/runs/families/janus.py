"""Janus / Janus-Pro checkpoints in transformers' layout (`model_type: janus`, e.g.
`deepseek-community/Janus-Pro-1B`) as unimm runs: one engine, not a second one.

Mapping (transformers -> ours; litgpt's convert-at-load approach):
- the Llama language model -> our backbone (fused q/k/v and gate/up, 1-D rotary: rope
  sections (head_dim / 2, 0, 0)), `embed_tokens` / `lm_head` -> the token table and head over
  Janus's own vocabulary (specials at Janus's ids, `Vocab.ids`);
- `generation_embeddings` + `generation_aligner` + `generation_head` -> our CodeMLP (image
  codes in and out), the codes after the text vocabulary (`Vocab.first_code`);
- the parts we do not have run on transformers' own modules behind our interfaces: SigLIP
  (`JanusVisionModel`) + its aligner as the `decoupled` paradigm's encoder (the input image's
  576 `<image_placeholder>` positions take its features), the VQ-VAE (`JanusVQVAE`) as the
  image tokenizer, and the image processor's geometry (resize the longest side, pad square
  with the mean colour) for input images of any size.

Prompts follow transformers' JanusProcessor and the checkpoint's chat template exactly
(`JanusLayout`): understanding = BOS + the default system prompt + "<|User|>: " + the image +
"\\n{question}\\n\\n<|Assistant|>:"; generation = BOS + "<|User|>: {prompt}\\n\\n<|Assistant|>:"
+ <begin_of_image>, its guidance row the same with every token but BOS and <begin_of_image>
replaced by the pad token (ARConfig.uncond = "pad", as transformers and DeepSeek sample).
Janus draws and answers; it was not trained to edit, so editing is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ...data.splits import WorldConfig
from ...data.worlds import DataConfig
from ...model.config import ModelConfig
from ...model.unified import TokenModel
from ...paradigms.ar import ARConfig
from ...paradigms.base import Layout, Turn
from ...paradigms.decoupled import Decoupled, DecoupledConfig, aligner
from ...paradigms.sequence import Builder, Packed, Vocab
from ...tokenizers.pretrained import PretrainedTextTokenizer
from ...utils.io import read_json
from ..config import EvalConfig, RunConfig
from ..folder import Parts
from .common import FamilyError, load_state, need_transformers, torch_dtype
from .janus_names import from_janus_state

SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand "
                 "the visual content that the user provides, and assist the user with a "
                 "variety of tasks using natural language.\n\n")
TASKS = ("caption", "vqa", "t2i")
# Sampling presets (DeepSeek's generation_inference.py and demo): guidance 5, temperature 1,
# no top-k; answers greedy. Pinned so that GenEval exports reproduce.
PRESET = {"guidance": 5.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


# ---- the parts transformers has and we do not ------------------------------------------------
class ImageGeometry:
    """JanusImageProcessor before rescaling: the longest side to `size` (bicubic, the other
    side rounded, at least `min_size`), centred on a square of the background colour (the
    image mean in 0-255: (127, 127, 127) for Janus-Pro). uint8 (H, W, 3) -> (size, size, 3)."""

    def __init__(self, size: int, min_size: int, mean):
        self.size, self.min_size = size, min_size
        self.background = tuple(int(m * 255) for m in mean)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if max(h, w) != self.size:
            d = self.size / max(h, w)
            h, w = max(round(h * d), self.min_size), max(round(w * d), self.min_size)
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))
        if h == w:
            return image
        m = max(h, w)
        out = np.empty((m, m, 3), np.uint8)
        out[:] = self.background
        s = (m - min(h, w)) // 2
        if w > h:
            out[s:s + h] = image
        else:
            out[:, s:s + w] = image
        return out


class _Normalise(nn.Module):
    """uint8 (B, H, W, 3) -> (B, 3, H, W) float, (x / 255 - mean) / std."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.to(self.mean.device).permute(0, 3, 1, 2).float().div(255)
        return (x - self.mean) / self.std


class SigLIPReader(nn.Module):
    """Janus's understanding encoder: uint8 (B, S, S, 3) -> (B, N, E) SigLIP patch features
    (transformers' JanusVisionModel, after its post-norm)."""

    def __init__(self, vision_config, mean, std):
        super().__init__()
        from transformers.models.janus.modeling_janus import JanusVisionModel
        self.norm = _Normalise(mean, std)
        self.tower = JanusVisionModel(vision_config)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.norm(pixels).to(self.tower.embeddings.patch_embedding.weight.dtype)
        return self.tower(pixel_values=x).last_hidden_state


class JanusVQ(nn.Module):
    """Janus's VQ-VAE as an image tokenizer: `decode(codes (B, h, w))` -> uint8 (B, S, S, 3)
    as DeepSeek's and transformers' postprocessing do ((x + 1) / 2 * 255, clipped,
    truncated); `encode(uint8 (B, S, S, 3))` -> codes (B, h, w)."""

    def __init__(self, vq_config, image_size: int, mean, std):
        super().__init__()
        from transformers.models.janus.modeling_janus import JanusVQVAE
        self.norm = _Normalise(mean, std)
        self.vq = JanusVQVAE(vq_config)
        self.image_size = image_size
        n = vq_config.num_patches
        self.grid = (n, n)
        self.codebook_size = vq_config.num_embeddings

    @torch.no_grad()
    def decode(self, codes) -> np.ndarray:
        codes = torch.as_tensor(codes, device=self.norm.mean.device).reshape(len(codes), -1)
        x = self.vq.decode(codes).float()                                  # (B, 3, S, S)
        x = ((x + 1) / 2 * 255).clamp(0, 255)
        return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()

    @torch.no_grad()
    def encode(self, images) -> Tensor:
        x = self.norm(torch.as_tensor(np.asarray(images)))
        x = x.to(next(self.vq.parameters()).dtype)
        return self.vq.encode(x).image_tokens.view(len(x), *self.grid)


# ---- prompts ------------------------------------------------------------------------------------
class JanusLayout(Layout):
    """Janus's prompts (see the module notes). Text between special tokens is tokenised as
    one piece, as the processor tokenises the whole prompt: the question is decoded back to
    text and tokenised inside its template (a byte-level BPE round-trips exactly)."""

    def __init__(self, tok: PretrainedTextTokenizer, n_image: int):
        self.tok, self.n_image = tok, n_image

    def _text(self, b: Builder, text: str, loss: bool = False) -> None:
        if text:
            b.text(self.tok.encode(text), loss=loss)

    def __call__(self, v: Vocab, turn: Turn, with_target: bool = True) -> Packed:
        b = Builder(v).special("<bos>")
        said = self.tok.decode(turn.text)
        if turn.task in ("caption", "vqa"):
            if turn.image is None:
                self._text(b, SYSTEM_PROMPT + "<|User|>: " + said.strip()
                           + "\n\n<|Assistant|>:")
            else:
                self._text(b, SYSTEM_PROMPT + "<|User|>: ")
                b.special("<boi>").text([v.special("<image>")] * self.n_image).special("<eoi>")
                self._text(b, "\n" + said.strip() + "\n\n<|Assistant|>:")
            if with_target:
                self._text(b, " " + self.tok.decode(turn.answer), loss=True)
                b.special("<eos>", loss=True)
            return b.build()
        if turn.task != "t2i":
            raise FamilyError("Janus was not trained to edit images; it answers questions "
                              "about images and draws from text")
        self._text(b, "<|User|>: " + said.strip() + "\n\n<|Assistant|>:")
        b.special("<boi>")
        if with_target:
            t0 = b._t()
            h, w = v.grid
            for k, c in enumerate(turn.target_image):
                b._add(v.code_start + int(c), True, (t0 + k, *divmod(k, w)), 1)
        return b.build()


# ---- loading -----------------------------------------------------------------------------------
def _text_config(cfg: dict) -> dict:
    t = cfg.get("text_config") or {}
    if t.get("model_type", "llama") != "llama":
        raise FamilyError(f"Janus's language model must be Llama-shaped; got "
                          f"{t.get('model_type')!r}")
    return t


def model_config(cfg: dict) -> ModelConfig:
    """Our model config of a JanusConfig dict (config.json)."""
    t = _text_config(cfg)
    vq = cfg.get("vq_config") or {}
    dim, heads = t.get("hidden_size", 4096), t.get("num_attention_heads", 32)
    head_dim = t.get("head_dim") or dim // heads
    if head_dim * heads != dim:
        raise FamilyError(f"head_dim {head_dim} x {heads} heads != hidden size {dim}: not "
                          f"supported (our backbone's head width is dim / heads)")
    if t.get("attention_bias") or t.get("mlp_bias"):
        raise FamilyError("Llama attention or MLP biases are not supported")
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise FamilyError(f"rope scaling {rope.get('rope_type')!r} is not supported")
    theta = rope.get("rope_theta", t.get("rope_theta", 10000.0))
    width = vq.get("projection_dim", dim)
    if width != dim or vq.get("image_token_embed_dim", dim) != dim:
        raise FamilyError("Janus's generation aligner and head must be as wide as the language "
                          f"model ({dim}); got {width}")
    return ModelConfig(dim=dim, n_layers=t.get("num_hidden_layers", 32), n_heads=heads,
                       n_kv_heads=t.get("num_key_value_heads", heads),
                       mlp_hidden=t.get("intermediate_size", 11008),
                       max_seq_len=t.get("max_position_embeddings", 16384),
                       rope_theta=float(theta), rope_sections=(head_dim // 2, 0, 0),
                       rope_layout="contiguous", norm_eps=t.get("rms_norm_eps", 1e-6),
                       code_mlp=vq.get("embed_dim", 8))


def image_settings(folder: Path, image_size: int) -> dict:
    """The image processor's settings from preprocessor_config.json (Hub folders) or the
    processor_config.json transformers 5 writes ("image_processor" inside)."""
    found = {}
    for name, key in (("processor_config.json", "image_processor"),
                      ("preprocessor_config.json", None)):
        p = folder / name
        if p.is_file():
            d = read_json(p)
            d = d.get(key, {}) if key else d
            if isinstance(d, dict) and d:
                found = d
                break
    size = found.get("size") or {}
    return {"size": size.get("height", found.get("image_size", image_size)),
            "min_size": found.get("min_size", 14),
            "mean": tuple(found.get("image_mean", (0.5, 0.5, 0.5))),
            "std": tuple(found.get("image_std", (0.5, 0.5, 0.5)))}


def _state_for(model: TokenModel, paradigm, vq: JanusVQ, state: dict[str, Tensor],
               n_layers: int) -> None:
    """Load transformers-named tensors into our modules (strict: every tensor used, every
    parameter filled)."""
    if "lm_head.weight" not in state:                      # tied (JanusConfig's default)
        state = {**state, "lm_head.weight": state["model.language_model.embed_tokens.weight"]}
    try:
        ours = from_janus_state(state, model.cfg)
    except KeyError as e:
        raise FamilyError(f"not a Janus checkpoint of its config's shape: missing "
                          f"{e.args[0]}") from None
    enc = {f"extras.encoder.tower.{k[len('model.vision_model.'):]}": v
           for k, v in state.items() if k.startswith("model.vision_model.")}
    for theirs, mine in (("model.aligner.fc1", "extras.aligner.0"),
                         ("model.aligner.hidden_layers.0", "extras.aligner.2")):
        for p in ("weight", "bias"):
            enc[f"{mine}.{p}"] = state[f"{theirs}.{p}"]
    missing, unexpected = model.load_state_dict({**ours, **enc}, strict=False)
    if missing or unexpected:
        raise FamilyError(f"the checkpoint does not fit its config: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")
    vq_state = {k[len("model.vqmodel."):]: v for k, v in state.items()
                if k.startswith("model.vqmodel.")}
    missing, unexpected = vq.vq.load_state_dict(vq_state, strict=False)
    if missing or unexpected:
        raise FamilyError(f"the VQ-VAE's weights do not fit: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")


def load(folder: Path, device, dtype: str | None = None, image_size: int | None = None):
    """A Janus folder -> Parts (with the input-image geometry), on `device` in `dtype`.
    Janus draws at its VQ-VAE's one resolution (384 for Janus-Pro): `image_size` may only
    name it."""
    need_transformers("Janus")
    from transformers import JanusConfig
    folder = Path(folder)
    raw = read_json(folder / "config.json")
    jcfg = JanusConfig.from_dict(raw)
    tok = PretrainedTextTokenizer.load(folder)
    gen = read_json(folder / "generation_config.json") if \
        (folder / "generation_config.json").is_file() else {}
    ids = {}
    for role in ("bos", "eos", "image", "boi", "eoi"):
        ids[role] = tok.special(role) if role in tok.specials else None
    ids["pad"] = gen.get("pad_token_id", tok.specials.get("pad"))    # the guidance rows' pad
    boi = (gen.get("generation_kwargs") or {}).get("boi_token_id")
    if boi is not None:
        ids["boi"] = boi
    if ids["image"] is None and raw.get("image_token_id") is not None:
        ids["image"] = raw["image_token_id"]
    absent = [r for r, i in ids.items() if i is None]
    if absent:
        raise FamilyError(f"{folder}: the tokenizer defines no {', '.join(absent)} token(s)")
    mc = model_config(raw)
    vision = jcfg.vision_config
    if image_size not in (None, vision.image_size):
        raise FamilyError(f"Janus draws {vision.image_size}x{vision.image_size} images only; "
                          f"got image_size={image_size}")
    n = vision.image_size // vision.patch_size
    if vision.num_image_tokens != n * n or jcfg.vq_config.num_patches != n:
        raise FamilyError(f"{folder}: SigLIP reads {vision.num_image_tokens} tokens but the "
                          f"VQ grid is {jcfg.vq_config.num_patches}^2; not supported")
    text_vocab = _text_config(raw).get("vocab_size", tok.vocab_size)
    vocab = Vocab(text_vocab, jcfg.vq_config.num_embeddings, (n, n),
                  ids=tuple(sorted(ids.items())), first_code=text_vocab)
    im = image_settings(folder, vision.image_size)
    cfg = RunConfig(name=folder.name, paradigm="decoupled",
                    paradigm_config=DecoupledConfig(ar=ARConfig(uncond="pad")), model=mc,
                    data=DataConfig(dataset="manifest", world=WorldConfig(image_size=im["size"])),
                    eval=EvalConfig(guidance=PRESET["guidance"], temperature=PRESET["temperature"],
                                    top_k=PRESET["top_k"], top_p=PRESET["top_p"]))
    torch.manual_seed(0)
    model = TokenModel(vocab.size, mc, code_start=vocab.code_start, code_mlp=mc.code_mlp)
    model.extras["encoder"] = SigLIPReader(vision, im["mean"], im["std"])
    model.extras["aligner"] = aligner(vision.hidden_size, mc.dim, vision.depth)
    paradigm = Decoupled(vocab, cfg.paradigm_config)
    paradigm.layout = JanusLayout(tok, vision.num_image_tokens)
    paradigm.input_size = vision.image_size
    paradigm.tasks = TASKS
    vq = JanusVQ(jcfg.vq_config, vision.image_size, im["mean"], im["std"])
    _state_for(model, paradigm, vq, load_state(folder), mc.n_layers)
    dt = torch_dtype(dtype, raw)
    model.to(device=device, dtype=dt).eval()
    vq.to(device=device, dtype=dt).eval()
    return Parts(cfg, vocab, tok, vq, model, paradigm, family="janus",
                 prepare=ImageGeometry(vision.image_size, im["min_size"], im["mean"]))


__all__ = ["load", "JanusLayout", "JanusVQ", "SigLIPReader", "ImageGeometry"]
