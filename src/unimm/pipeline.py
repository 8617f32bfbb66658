"""The Python API: one object that captions, answers, draws and edits, for any trained run.

    from unimm import Pipeline
    pipe = Pipeline.load()                      # the default model shipped with the package
    pipe.ask("scene.png", "How many shapes are there?")
    images = pipe.generate("a large red circle in the center", n=4, seed=0)

Inputs are validated at this edge (images: path / PIL / array, RGB, the model's size; text:
non-empty, within the model's length); errors say what was wrong and what is accepted. The CLI
and the server are thin adapters over this class.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .data.images import ImageError, load_image
from .data.text import final_answer
from .paradigms.base import Turn
from .paradigms.sampling import GREEDY, MAX_GUIDANCE, SamplingConfig
from .train.config import PRECISIONS
from .train.run import Parts, RunError, load_run, resolve_device

MAX_PROMPT_CHARS = 1000
MAX_BATCH = 32
DEFAULT_RUN = Path(__file__).parent / "assets" / "default"


class InputError(ValueError):
    """Bad user input (text or options) for a Pipeline call."""


def default_run_dir() -> Path:
    return DEFAULT_RUN


class Pipeline:
    def __init__(self, parts: Parts, model=None, device="cpu"):
        self.parts = parts
        self.model = model if model is not None else parts.model
        self.device = torch.device(device)
        self.cfg = parts.cfg
        self.vocab = parts.vocab
        self.paradigm = parts.paradigm
        self.image_size = self.cfg.data.world.image_size
        ev = self.cfg.eval
        # a run whose config predates a field loads with its default (utils.config.from_dict)
        self.default_guidance = ev.guidance
        self.default_edit_guidance = ev.guidance if ev.edit_guidance is None else ev.edit_guidance
        self.default_sampling = SamplingConfig(ev.temperature, ev.top_k, ev.top_p)
        self.precision = ev.precision

    def _autocast(self):
        """The run's sampling precision (config eval.precision) around a network call."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    @classmethod
    def load(cls, run: str | os.PathLike | None = None, device: str = "auto",
             compile: bool = False, precision: str | None = None) -> "Pipeline":
        """Load a run folder (None or "default": the model that ships with the package).
        `compile`: token-by-token decoding (answers, autoregressive images) through a compiled
        fixed-shape step (model/decode.py, AOTInductor): same greedy outputs, faster once warm;
        the first call per kind (answer text, image codes) and batch class (up to 8 rows, 9 to
        256) compiles, about a minute on a CPU, so it pays off in servers and long jobs.
        `precision`: "fp32" or "bf16" instead of the run's eval.precision (bf16: the network
        under bf16 autocast, and compiled steps computing in bf16; outputs may differ)."""
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
        run_dir = DEFAULT_RUN if run in (None, "default") else Path(run)
        if not run_dir.exists():
            raise RunError(f"no run folder at {run_dir}" + (
                " (the default model is not installed: train one with `unimm train "
                "configs/shapes_ar.toml`)" if run_dir == DEFAULT_RUN else ""))
        dev = resolve_device(device)
        pipe = cls(load_run(run_dir, dev), device=dev)
        if precision is not None:
            pipe.precision = precision
        if compile:
            pipe.model.compile_decode()
        return pipe

    # ---- validation --------------------------------------------------------------------------
    def _image(self, x, what: str = "image") -> np.ndarray:
        gray = self.cfg.data.dataset == "digits"
        img = load_image(x, what=what, allow_gray=gray)
        if img.shape[:2] != (self.image_size, self.image_size):
            raise ImageError(f"{what}: this model reads {self.image_size}x{self.image_size} "
                             f"images, got {img.shape[1]}x{img.shape[0]}")
        return img

    def _ids(self, text, what: str, room: int) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"{what} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"{what} is empty; give some text")
        if len(text) > MAX_PROMPT_CHARS:
            raise InputError(f"{what} has {len(text)} characters; at most {MAX_PROMPT_CHARS} "
                             "are accepted")
        ids = self.parts.text_tok.encode(text)
        limit = self.cfg.model.max_seq_len - room
        if len(ids) > limit:
            raise InputError(f"{what} is {len(ids)} tokens long; this model accepts at most "
                             f"{limit} here")
        return ids

    def _codes(self, images: list[np.ndarray]) -> list[list[int]]:
        if not images:
            return []
        with torch.no_grad():
            c = self.parts.image_tok.encode(np.stack(images))
        return c.reshape(len(images), -1).tolist()

    def _sampling(self, temperature, top_k, top_p) -> SamplingConfig:
        d = self.default_sampling
        try:
            return SamplingConfig(
                temperature=d.temperature if temperature is None else float(temperature),
                top_k=d.top_k if top_k is None else int(top_k),
                top_p=d.top_p if top_p is None else float(top_p))
        except (TypeError, ValueError) as e:
            raise InputError(f"bad sampling option: {e}") from None

    # ---- batched core ------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, images, questions, max_new: int = 64,
               sampling: SamplingConfig = GREEDY, seed: int | None = None,
               reasoning: bool = False) -> list[str]:
        """Answer questions about images (one each), batched. Runs trained to describe the scene
        before answering (`data.vqa_reasoning`) return only the answer unless `reasoning`."""
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images but {len(questions)} questions")
        # The question must leave room for at least a short answer; the answer is then cut at
        # whatever length the context still allows.
        room = self.vocab.n_image + 8 + self.paradigm.min_answer
        imgs = [self._image(im) for im in images]
        turns = [Turn("vqa", self._ids(q, "question", room), c, None, None, im)
                 for q, c, im in zip(questions, self._codes(imgs), imgs)]
        gen = _generator(seed, self.device)
        out = []
        for i in range(0, len(turns), MAX_BATCH):
            chunk = turns[i:i + MAX_BATCH]
            prefix = max(len(t.text) for t in chunk) + self.vocab.n_image + 6
            n_new = min(max_new, self.cfg.model.max_seq_len - prefix)
            with self._autocast():
                ids = self.paradigm.generate_text(self.model, chunk, n_new, sampling, gen)
            out += [self.parts.text_tok.decode(x).strip() for x in ids]
        return out if reasoning else [final_answer(t) for t in out]

    @torch.no_grad()
    def draw(self, prompts, images=None, guidance: float | None = None,
             sampling: SamplingConfig | None = None, seed: int | None = None) -> list[np.ndarray]:
        """Generate one image per prompt (editing when `images` are given), batched. Guidance
        and sampling default to the run's measured choice (config `eval`)."""
        if guidance is None:
            guidance = self.default_guidance if images is None else self.default_edit_guidance
        guidance = float(guidance)
        sampling = self.default_sampling if sampling is None else sampling
        if not 0 <= guidance <= MAX_GUIDANCE:
            raise InputError(f"guidance must lie in [0, {MAX_GUIDANCE:g}], got {guidance}")
        room = self.vocab.n_image * (2 if images is not None else 1) + 8
        what = "instruction" if images is not None else "prompt"
        ids = [self._ids(p, what, room) for p in prompts]
        if images is None:
            turns = [Turn("t2i", i) for i in ids]
        else:
            if len(images) != len(prompts):
                raise InputError(f"{len(images)} images but {len(prompts)} instructions")
            imgs = [self._image(im) for im in images]
            turns = [Turn("edit", i, c, None, None, im)
                     for i, c, im in zip(ids, self._codes(imgs), imgs)]
        gen = _generator(seed, self.device)
        out = []
        for i in range(0, len(turns), MAX_BATCH):
            with self._autocast():
                made = self.paradigm.generate_images(self.model, turns[i:i + MAX_BATCH],
                                                     guidance, sampling, gen)
            out += list(self.paradigm.to_pixels(self.parts.image_tok, made))
        return out

    # ---- the friendly API --------------------------------------------------------------------
    def caption(self, image) -> str:
        from .data.splits import CAPTION_PROMPT
        return self.answer([image], [CAPTION_PROMPT])[0]

    def ask(self, image, question: str, reasoning: bool = False) -> str:
        """The answer; with `reasoning`, the whole reply (a scene description, then
        "Answer: ..." for runs trained with `data.vqa_reasoning`)."""
        return self.answer([image], [question], reasoning=reasoning)[0]

    def generate(self, prompt: str, n: int = 1, guidance: float | None = None,
                 seed: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None) -> list[np.ndarray]:
        """n images for one prompt. Unset options take the run's defaults; temperature 0 is
        greedy (n identical images), so use temperature > 0 for variety."""
        if not isinstance(n, int) or not 1 <= n <= 64:
            raise InputError(f"n must be an integer in [1, 64], got {n!r}")
        return self.draw([prompt] * n, None, guidance, self._sampling(temperature, top_k, top_p), seed)

    def edit(self, image, instruction: str, guidance: float | None = None,
             seed: int | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
        return self.draw([instruction], [image], guidance,
                         self._sampling(temperature, top_k, top_p), seed)[0]


def _generator(seed: int | None, device) -> torch.Generator:
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


__all__ = ["Pipeline", "InputError", "default_run_dir"]
