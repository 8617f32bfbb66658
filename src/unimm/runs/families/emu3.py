"""Emu3 checkpoints in transformers' layout (`model_type: emu3`; BAAI's Emu3-Gen-hf and
Emu3-Chat-hf) as unimm runs.

Mapping: the Llama-shaped text model (grouped-query attention, rope theta 1e6) -> our
backbone with 1-D rotary positions; its one vocabulary holds the text, the specials and the
32,768 visual tokens (`<|visual token000123|>`, the last ids), so image codes are rows of the
shared table and head (`Vocab.first_code`); the VQ-VAE (`Emu3VQVAE`, transformers' module)
is the image tokenizer.

An image in the sequence is `<|image start|>{h}*{w}<|image token|>`, h rows of w codes each
followed by the end-of-line token `<|extra_200|>`, then `<|extra_201|><|image end|>`
(`Vocab.row_end`). Drawing samples the codes of each row and *feeds* the end of line after it
(the grid constraint transformers' docs write as a `prefix_allowed_tokens_fn`), with
classifier-free guidance batched next to the prompt: the guidance row is the image prefix
alone (an empty negative prompt), where transformers runs it as a second, unbatched pass.
Understanding prompts follow the chat template: "You are a helpful assistant. USER: <image>
{question} ASSISTANT:". Input images are resized as Emu3's image processor does (sides
multiples of 8, area within its pixel bounds), so their code grid varies with the aspect ratio.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ...data.splits import WorldConfig
from ...data.worlds import DataConfig
from ...model.config import ModelConfig
from ...model.unified import TokenModel
from ...paradigms.ar import ARConfig, Autoregressive
from ...paradigms.base import Layout, Turn
from ...paradigms.sequence import Builder, Packed, Vocab
from ...tokenizers.pretrained import PretrainedTextTokenizer
from ...utils.io import read_json
from ..config import EvalConfig, RunConfig
from ..folder import Parts
from .common import FamilyError, load_state, need_transformers, torch_dtype
from .janus import _Normalise

SYSTEM_PROMPT = "You are a helpful assistant. USER: "
ROLES = {"eol": "<|extra_200|>", "eof": "<|extra_201|>", "boi": "<|image start|>",
         "eoi": "<|image end|>", "wrapper": "<|image token|>"}
TASKS = ("caption", "vqa", "t2i")
GENERATE_SIDE = 720          # transformers' default image_area 518,400 = 720 x 720 -> 90 x 90
# Sampling presets (BAAI's Emu3 generation example): guidance 3, top-k 2048, temperature 1.
PRESET = {"guidance": 3.0, "temperature": 1.0, "top_k": 2048, "top_p": 1.0}


def smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int):
    """Emu3's image processor's target size: sides multiples of `factor`, area within the
    bounds, aspect ratio kept as closely as possible."""
    if max(h, w) / min(h, w) > 200:
        raise FamilyError(f"an image of {w}x{h}: Emu3 reads aspect ratios up to 200")
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb = max(factor, math.floor(h / beta / factor) * factor)
        wb = max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


class Emu3Geometry:
    """Input images resized as Emu3ImageProcessor does (bicubic, `smart_resize`)."""

    def __init__(self, factor: int, min_pixels: int, max_pixels: int):
        self.factor, self.min_pixels, self.max_pixels = factor, min_pixels, max_pixels

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        nh, nw = smart_resize(h, w, self.factor, self.min_pixels, self.max_pixels)
        if (nh, nw) == (h, w):
            return image
        return np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC))


class Emu3VQ(nn.Module):
    """Emu3's VQ-VAE as an image tokenizer: `encode(images)` -> one (h, w) code grid per image
    (sizes may differ); `decode(codes (B, h, w))` -> uint8 (B, 8h, 8w, 3) (the first frame,
    unnormalised, clipped and truncated as Emu3's postprocessing does). `grid` / `image_size`:
    what generation draws."""

    def __init__(self, vq_config, grid: tuple[int, int], mean, std):
        super().__init__()
        from transformers.models.emu3.modeling_emu3 import Emu3VQVAE
        self.norm = _Normalise(mean, std)
        self.vq = Emu3VQVAE(vq_config)
        self.factor = 2 ** (len(vq_config.channel_multiplier) - 1)
        self.grid = grid
        self.image_size = grid[0] * self.factor
        self.codebook_size = vq_config.codebook_size

    @torch.no_grad()
    def encode(self, images) -> list[Tensor]:
        out = []
        for im in images:                                  # sizes may differ: one at a time
            x = self.norm(torch.from_numpy(np.array(im))[None])
            x = x.to(next(self.vq.parameters()).dtype)
            sizes = torch.tensor([x.shape[-2:]], device=x.device)
            out.append(self.vq.encode(x, sizes).image_tokens[0])
        return out

    @torch.no_grad()
    def decode(self, codes) -> np.ndarray:
        codes = torch.as_tensor(codes, device=self.norm.mean.device)
        if codes.ndim == 2:
            codes = codes.view(len(codes), *self.grid)
        x = self.vq.decode(codes).float()
        if x.ndim == 5:                                        # (B, T, 3, H, W): frame 0
            x = x[:, 0]
        x = (x * self.norm.std + self.norm.mean) * 255
        return x.clamp(0, 255).permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


class Emu3Layout(Layout):
    """Emu3's prompts (see the module notes); an input image is a (h, w) nested list of codes
    (`Turn.image`), so its grid travels with it."""

    def __init__(self, tok: PretrainedTextTokenizer, ids: dict[str, int]):
        self.tok, self.ids = tok, ids

    def _text(self, b: Builder, text: str, loss: bool = False) -> None:
        if text:
            b.text(self.tok.encode(text), loss=loss)

    def _image(self, v: Vocab, b: Builder, rows, loss: bool = False) -> None:
        h, w = len(rows), len(rows[0])
        b.text([self.ids["boi"]], loss)
        self._text(b, f"{h}*{w}", loss)
        b.text([self.ids["wrapper"]], loss)
        for r in rows:
            b.text([v.code_start + int(c) for c in r] + [self.ids["eol"]], loss)
        b.text([self.ids["eof"], self.ids["eoi"]], loss)

    def _prefix(self, v: Vocab, b: Builder) -> None:
        h, w = v.grid
        b.text([self.ids["boi"]])
        self._text(b, f"{h}*{w}")
        b.text([self.ids["wrapper"]])

    def __call__(self, v: Vocab, turn: Turn, with_target: bool = True) -> Packed:
        b = Builder(v).special("<bos>")
        said = self.tok.decode(turn.text)
        if turn.task in ("caption", "vqa"):
            self._text(b, SYSTEM_PROMPT)
            if turn.image is not None:
                self._image(v, b, turn.image)
            self._text(b, said.strip() + " ASSISTANT:")
            if with_target:
                self._text(b, " " + self.tok.decode(turn.answer), loss=True)
                b.special("<eos>", loss=True)
            return b.build()
        if turn.task != "t2i":
            raise FamilyError("Emu3 does not edit images; it answers questions about images "
                              "and draws from text")
        self._text(b, said.strip())
        return self._target(v, b, turn, with_target)

    def _target(self, v: Vocab, b: Builder, turn: Turn, with_target: bool) -> Packed:
        self._prefix(v, b)
        if with_target:
            h, w = v.grid
            codes = list(turn.target_image)
            for r in range(h):
                b.text([v.code_start + int(c) for c in codes[r * w:(r + 1) * w]]
                       + [self.ids["eol"]], loss=True)
            b.text([self.ids["eof"], self.ids["eoi"]], loss=True).special("<eos>", loss=True)
        return b.build()

    def uncond(self, v: Vocab, turn: Turn, with_target: bool = False) -> Packed:
        """The guidance row: the image prefix after an empty negative prompt."""
        return self._target(v, Builder(v).special("<bos>"), turn, with_target)


def model_config(t: dict) -> ModelConfig:
    dim, heads = t.get("hidden_size", 4096), t.get("num_attention_heads", 32)
    head_dim = t.get("head_dim") or dim // heads
    if head_dim * heads != dim:
        raise FamilyError(f"head_dim {head_dim} x {heads} heads != hidden size {dim}")
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise FamilyError(f"rope scaling {rope.get('rope_type')!r} is not supported")
    return ModelConfig(dim=dim, n_layers=t.get("num_hidden_layers", 32), n_heads=heads,
                       n_kv_heads=t.get("num_key_value_heads", heads),
                       mlp_hidden=t.get("intermediate_size", 14336),
                       max_seq_len=t.get("max_position_embeddings", 9216),
                       rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1e6))),
                       rope_sections=(head_dim // 2, 0, 0), rope_layout="contiguous",
                       norm_eps=t.get("rms_norm_eps", 1e-5))


def _our_state(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """transformers' Emu3 text-model tensors (on-disk `text_model.model.*` or in-memory
    `model.text_model.*` names) -> our TokenModel's."""
    lm = {}
    for k, v in state.items():
        for pre in ("text_model.model.", "model.text_model."):
            if k.startswith(pre):
                lm[k[len(pre):]] = v
    head = state.get("text_model.lm_head.weight", state.get("lm_head.weight"))
    if head is None:
        head = lm["embed_tokens.weight"]
    out = {"embed.weight": lm["embed_tokens.weight"], "head.weight": head,
           "backbone.norm.weight": lm["norm.weight"]}
    for i in range(n_layers):
        a, b = f"backbone.blocks.{i}.", f"layers.{i}."
        out[a + "attn_norm.weight"] = lm[b + "input_layernorm.weight"]
        out[a + "mlp_norm.weight"] = lm[b + "post_attention_layernorm.weight"]
        out[a + "attn.qkv.weight"] = torch.cat([lm[b + f"self_attn.{p}_proj.weight"]
                                                for p in "qkv"])
        out[a + "attn.proj.weight"] = lm[b + "self_attn.o_proj.weight"]
        out[a + "mlp.gate_up.weight"] = torch.cat([lm[b + "mlp.gate_proj.weight"],
                                                   lm[b + "mlp.up_proj.weight"]])
        out[a + "mlp.down.weight"] = lm[b + "mlp.down_proj.weight"]
    return out


def _image_settings(folder: Path) -> dict:
    for name, key in (("processor_config.json", "image_processor"),
                      ("preprocessor_config.json", None)):
        p = folder / name
        if p.is_file():
            d = read_json(p)
            d = d.get(key, {}) if key else d
            if isinstance(d, dict) and d:
                return d
    return {}


def load(folder: Path, device, dtype: str | None = None, image_size: int | None = None):
    """An Emu3 folder -> Parts; `image_size`: the side of generated images in pixels (a
    multiple of the VQ's factor; default 720, Emu3's 90 x 90 codes)."""
    need_transformers("Emu3")
    from transformers import Emu3Config
    folder = Path(folder)
    raw = read_json(folder / "config.json")
    ecfg = Emu3Config.from_dict(raw)
    tok = PretrainedTextTokenizer.load(folder)
    vmap = raw.get("vocabulary_map") or {}
    ids = {r: vmap.get(t, tok.token_to_id(t)) for r, t in ROLES.items()}
    for role in ("bos", "eos", "pad"):
        ids[role] = tok.specials.get(role, raw.get("text_config", {}).get(f"{role}_token_id"))
    absent = [r for r, i in ids.items() if i is None]
    if absent:
        raise FamilyError(f"{folder}: no {', '.join(absent)} token(s) in the vocabulary")
    K = ecfg.vq_config.codebook_size
    visual = {int(t[-8:-2]): i for t, i in vmap.items() if t.startswith("<|visual token")}
    first = visual.get(0)
    t = raw.get("text_config") or {}
    n_vocab = t.get("vocab_size", tok.vocab_size)
    if first is None or any(visual.get(j) != first + j for j in range(K)) \
            or first + K != n_vocab:
        raise FamilyError(f"{folder}: the {K} visual tokens are not the last ids of the "
                          f"vocabulary in code order; not supported")
    factor = 2 ** (len(ecfg.vq_config.channel_multiplier) - 1)
    side = GENERATE_SIDE if image_size is None else int(image_size)
    if side % factor or side < factor:
        raise FamilyError(f"image_size {side}: Emu3 draws sides that are multiples of {factor}")
    grid = (side // factor, side // factor)
    mc = model_config(t)
    if mc.max_seq_len < grid[0] * (grid[1] + 1) + 64:
        raise FamilyError(f"image_size {side} needs {grid[0] * (grid[1] + 1)} positions; this "
                          f"checkpoint has {mc.max_seq_len}")
    vocab = Vocab(first, K, grid, ids=tuple(sorted((r, i) for r, i in ids.items()
                                                   if r in ("bos", "eos", "pad", "boi", "eoi"))),
                  first_code=first, row_end=ids["eol"])
    im = _image_settings(folder)
    mean = tuple(im.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(im.get("image_std", (0.5, 0.5, 0.5)))
    cfg = RunConfig(name=folder.name, paradigm="ar", paradigm_config=ARConfig(), model=mc,
                    data=DataConfig(dataset="manifest", world=WorldConfig(image_size=side)),
                    eval=EvalConfig(guidance=PRESET["guidance"], temperature=PRESET["temperature"],
                                    top_k=PRESET["top_k"], top_p=PRESET["top_p"]))
    model = TokenModel(vocab.size, mc, code_start=vocab.code_start)
    state = load_state(folder)
    missing, unexpected = model.load_state_dict(_our_state(state, mc.n_layers), strict=False)
    if missing or unexpected:
        raise FamilyError(f"the checkpoint does not fit its config: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")
    vq = Emu3VQ(ecfg.vq_config, grid, mean, std)
    vq_state = {k.split("vqmodel.", 1)[1]: v for k, v in state.items() if "vqmodel." in k}
    missing, unexpected = vq.vq.load_state_dict(vq_state, strict=False)
    if missing or unexpected:
        raise FamilyError(f"the VQ-VAE's weights do not fit: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")
    paradigm = Autoregressive(vocab, cfg.paradigm_config)
    paradigm.layout = Emu3Layout(tok, ids)
    paradigm.tasks = TASKS
    dt = torch_dtype(dtype, raw)
    model.to(device=device, dtype=dt).eval()
    vq.to(device=device, dtype=dt).eval()
    geometry = Emu3Geometry(factor, im.get("min_pixels", 512 * 512),
                            im.get("max_pixels", 1024 * 1024))
    return Parts(cfg, vocab, tok, vq, model, paradigm, family="emu3", prepare=geometry)
