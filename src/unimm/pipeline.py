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

import math
import os
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .data.images import ImageError, load_image
from .data.splits import CAPTION_PROMPT
from .data.worlds import make_world
from .data.text import ANSWER_MARK, final_answer
from .paradigms.base import Turn
from .paradigms.sampling import GREEDY, MAX_GUIDANCE, MAX_TEMPERATURE, SamplingConfig
from .runs import PRECISIONS, Parts, RunError, load_run, resolve_device

MAX_PROMPT_CHARS = 1000
MAX_BATCH = 32
MAX_SEED = 2**64 - 1            # torch.Generator.manual_seed's range
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
        self.world = make_world(self.cfg.data)       # what the model reads, its judge, its eval
        self.image_size = self.world.image_size
        ev = self.cfg.eval
        # a run whose config predates a field loads with its default (utils.config.from_dict)
        self.default_guidance = ev.guidance
        self.default_edit_guidance = ev.guidance if ev.edit_guidance is None else ev.edit_guidance
        self.default_sampling = SamplingConfig(ev.temperature, ev.top_k, ev.top_p)
        self.default_text_sampling = GREEDY           # answers: greedy unless asked (`answer`)
        self.precision = ev.precision

    def _autocast(self):
        """The run's sampling precision (config eval.precision) around a network call."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    @classmethod
    def load(cls, run: str | os.PathLike | None = None, device: str = "auto",
             compile: bool = False, precision: str | None = None,
             dtype: str | None = None, image_size: int | None = None) -> "Pipeline":
        """Load a run folder (None or "default": the model that ships with the package), or
        a released checkpoint folder in transformers' layout of a supported family (Janus,
        Emu3: runs/families), in `dtype` ("fp32" by default, "bf16", "fp16"); `image_size`:
        the side of the images a checkpoint draws where its family draws at several (Emu3).
        `compile`: token-by-token decoding (answers, autoregressive images) through a compiled
        fixed-shape step (unimm.fast, AOTInductor): same greedy outputs, faster once warm;
        the first call per kind (answer text, image codes) and batch class (up to 8 rows, 9 to
        256) compiles first (compile times: docs/fast.md), so it pays off in servers and
        long jobs.
        Compiled decoding is part of unimm.fast: with UNIMM_FAST=0 (or without the package)
        `compile` gives one warning and decodes eagerly, with the same outputs.
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
        pipe = cls(load_run(run_dir, dev, dtype, image_size), device=dev)
        if precision is not None:
            pipe.precision = precision
        if compile:
            pipe.model.compile_decode()
        return pipe

    # ---- what the model is (for adapters: a server's model id, health, image rules) ----------
    @property
    def name(self) -> str:
        """The run's name (config `name`)."""
        return self.cfg.name

    @property
    def paradigm_name(self) -> str:
        """The paradigm's key in `PARADIGMS` (config `paradigm`)."""
        return self.cfg.paradigm

    @property
    def accepts_gray(self) -> bool:
        """Whether greyscale input images are read (as grey RGB): the run's world says."""
        return self.world.accepts_gray

    @property
    def tasks(self) -> tuple[str, ...]:
        """What this model can be asked: caption, vqa, t2i, edit (a released checkpoint may
        lack some: Janus does not edit)."""
        return tuple(getattr(self.paradigm, "tasks", ("caption", "vqa", "t2i", "edit")))

    @property
    def image_tokens(self) -> int:
        """Context positions one input image takes (part of a question's prompt length)."""
        return self.vocab.n_image

    # ---- validation --------------------------------------------------------------------------
    def _image(self, x, what: str = "image") -> np.ndarray:
        prepare = self.parts.prepare
        img = load_image(x, what=what, allow_gray=self.accepts_gray or prepare is not None)
        if prepare is not None:                   # resized as the checkpoint's processor does
            return prepare(img)
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
        ids = self.count_tokens(text, what)
        limit = self.cfg.model.max_seq_len - room
        if len(ids) > limit:
            raise InputError(f"{what} is {len(ids)} tokens long; this model accepts at most "
                             f"{limit} here")
        return ids

    def count_tokens(self, text: str, what: str = "text") -> list[int]:
        """The text's token ids (what the model reads); InputError for text that is not
        valid Unicode (a lone surrogate cannot be encoded)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"{what} is not valid Unicode: a lone surrogate at character "
                             f"{e.start}; send UTF-8 text") from None
        return self.parts.text_tok.encode(text)

    def _codes(self, images: list[np.ndarray]) -> list[list[int]]:
        if not images:
            return []
        if self.vocab.has("<image>"):             # read by an encoder at placeholders
            return [[] for _ in images]
        if self.parts.family is not None:         # one grid each: sizes may differ (Emu3)
            with torch.no_grad():
                return [c.tolist() for c in self.parts.image_tok.encode(images)]
        with torch.no_grad():
            c = self.parts.image_tok.encode(np.stack(images))
        return c.reshape(len(images), -1).tolist()

    def _sampling(self, temperature, top_k, top_p) -> SamplingConfig:
        d = self.default_sampling
        return SamplingConfig(
            temperature=d.temperature if temperature is None else
            number(temperature, "temperature", 0, MAX_TEMPERATURE),
            top_k=d.top_k if top_k is None else int(number(top_k, "top_k", 0, 2**31, True)),
            top_p=d.top_p if top_p is None else number(top_p, "top_p", 0, 1, lo_open=True))

    # ---- batched core ------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, images, questions, max_new: int = 64,
               sampling: SamplingConfig = GREEDY, seed: int | None = None,
               reasoning: bool = False,
               on_token: Callable[[int, int], None] | None = None) -> list[str]:
        """Answer questions about images (one each), batched. Runs trained to describe the scene
        before answering (`data.vqa_reasoning`) return only the answer unless `reasoning`.
        `on_token(row, token_id)` is called from inside decoding with each row's token as it
        is decoded (the row's <eos> last), eager and compiled decoding alike; `TextStream`
        turns one row's tokens into text."""
        if not isinstance(sampling, SamplingConfig):
            raise InputError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise InputError(f"max_new must be a positive integer, got {max_new!r}")
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
            prefix = max(len(self.paradigm.layout(self.vocab, t, with_target=False))
                         for t in chunk)
            n_new = min(max_new, self.cfg.model.max_seq_len - prefix)
            tap = None if on_token is None else _rows_from(i, on_token)
            with self._autocast():
                ids = self.paradigm.generate_text(self.model, chunk, n_new, sampling, gen,
                                                  on_token=tap)
            out += [self.parts.text_tok.decode(x).strip() for x in ids]
        return out if reasoning else [final_answer(t) for t in out]

    @torch.no_grad()
    def draw(self, prompts, images=None, guidance: float | None = None,
             sampling: SamplingConfig | None = None, seed: int | None = None) -> list[np.ndarray]:
        """Generate one image per prompt (editing when `images` are given), batched. Guidance
        and sampling default to the run's measured choice (config `eval`)."""
        if guidance is None:
            guidance = self.default_guidance if images is None else self.default_edit_guidance
        guidance = number(guidance, "guidance", 0, MAX_GUIDANCE)
        sampling = self.default_sampling if sampling is None else sampling
        if not isinstance(sampling, SamplingConfig):
            raise InputError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        if isinstance(prompts, str):
            raise InputError("prompts must be a list of strings (one image each), got a string")
        if images is not None and "edit" not in self.tasks:
            raise InputError(f"this model ({self.name}) cannot edit images; it can "
                             f"{', '.join(self.tasks)}")
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
        return self.answer([image], [CAPTION_PROMPT])[0]

    def ask(self, image, question: str, reasoning: bool = False) -> str:
        """The answer; with `reasoning`, the whole reply (a scene description, then
        "Answer: ..." for runs trained with `data.vqa_reasoning`)."""
        return self.answer([image], [question], reasoning=reasoning)[0]

    def stream(self, image, question: str, reasoning: bool = False, max_new: int = 64,
               temperature: float | None = None, top_p: float | None = None,
               seed: int | None = None) -> Iterator[str]:
        """The answer as it is decoded: an iterator of text pieces whose concatenation is
        what `answer` returns with the same options (greedy, as `ask`, unless a temperature
        is given). Input errors raise here, at the call; decoding runs in a worker thread and
        stops early when the iterator is closed."""
        sam = GREEDY if temperature is None else self._sampling(temperature, None, top_p)
        self._check_ask(image, question)
        _generator(seed, "cpu")                         # a bad seed fails here too
        text = self.text_stream(reasoning)
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()
        end = object()

        def on_token(_row: int, tok: int) -> None:
            if stop.is_set():
                raise _Cancelled
            piece = text.push(tok)
            if piece:
                pieces.put(piece)

        def work() -> None:
            try:
                final = self.answer([image], [question], max_new, sam, seed, reasoning,
                                    on_token)[0]
                pieces.put(text.finish(final))
                pieces.put(end)
            except _Cancelled:
                pieces.put(end)
            except BaseException as e:          # noqa: BLE001 - re-raised in the caller
                pieces.put(e)

        def pieces_of() -> Iterator[str]:
            worker = threading.Thread(target=work, daemon=True, name="unimm-stream")
            worker.start()
            try:
                while (item := pieces.get()) is not end:
                    if isinstance(item, BaseException):
                        raise item
                    if item:
                        yield item
            finally:
                stop.set()
        return pieces_of()

    def _check_ask(self, image, question) -> None:
        room = self.vocab.n_image + 8 + self.paradigm.min_answer
        self._image(image)
        self._ids(question, "question", room)

    def text_stream(self, reasoning: bool = False) -> "TextStream":
        """A fresh TextStream for one answer row of this model (what `stream` and the
        server's streamed chat use)."""
        hold = self.cfg.data.vqa_reasoning != "none" and not reasoning
        return TextStream(self.parts.text_tok.decode, self.vocab.eos, hold)

    def generate(self, prompt: str, n: int = 1, guidance: float | None = None,
                 seed: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None) -> list[np.ndarray]:
        """n images for one prompt. Unset options take the run's defaults; temperature 0 is
        greedy (n identical images), so use temperature > 0 for variety."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
            raise InputError(f"n must be an integer in [1, 64], got {n!r}")
        return self.draw([prompt] * n, None, guidance, self._sampling(temperature, top_k, top_p), seed)

    def edit(self, image, instruction: str, guidance: float | None = None,
             seed: int | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
        return self.draw([instruction], [image], guidance,
                         self._sampling(temperature, top_k, top_p), seed)[0]


class TextStream:
    """One answer row's token ids in, text pieces out, such that the pieces add up to the
    answer `Pipeline.answer` returns for that row: leading and trailing spaces held back
    until more text follows, half a UTF-8 character held until its other bytes come, nothing
    after <eos>, and (`hold_for_mark`: a run trained to reason before answering, asked for the
    answer only) nothing before the answer mark."""

    def __init__(self, decode: Callable[[list[int]], str], eos: int, hold_for_mark: bool):
        self.decode, self.eos, self.hold = decode, eos, hold_for_mark
        self.ids: list[int] = []
        self.sent = ""
        self.ended = False

    def push(self, token: int) -> str:
        if self.ended or token == self.eos:
            self.ended = True
            return ""
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):                # half a UTF-8 character so far
            return ""
        if self.hold:
            head, mark, text = text.rpartition(ANSWER_MARK)
            if not mark:
                return ""
        return self._advance(text.strip())

    def finish(self, final: str) -> str:
        """The rest of the answer once decoding is over (`final`: what answer() returned)."""
        return self._advance(final)

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece


class _Cancelled(Exception):
    """Raised inside decoding when a stream's consumer has gone away."""


def _rows_from(offset: int, on_token: Callable[[int, int], None]):
    """The paradigm's per-step callback (one token or None per row of a chunk) -> the user's
    on_token(row, token) with rows counted in the whole call."""
    def tap(tokens: list) -> None:
        for b, t in enumerate(tokens):
            if t is not None:
                on_token(offset + b, t)
    return tap


def number(x, what: str, lo: float, hi: float, integer: bool = False,
           lo_open: bool = False) -> float:
    """A finite number (an integer with `integer`) in [lo, hi] ((lo, hi] with `lo_open`),
    else InputError naming the accepted range. Booleans and strings are not numbers."""
    kind = "an integer" if integer else "a number"
    rng = f"{'(' if lo_open else '['}{lo if integer else f'{lo:g}'}, {hi if integer else f'{hi:g}'}]"
    ok = isinstance(x, (int, np.integer)) if integer else \
        isinstance(x, (int, float, np.integer, np.floating))
    if isinstance(x, (bool, np.bool_)) or not ok or not math.isfinite(x) \
            or not (lo < x if lo_open else lo <= x) or not x <= hi:
        raise InputError(f"{what} must be {kind} in {rng}, got {x!r}")
    return int(x) if integer else float(x)


def _generator(seed: int | None, device) -> torch.Generator:
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    seed = number(seed, "seed", 0, MAX_SEED, integer=True)
    return torch.Generator(device=device).manual_seed(seed)


__all__ = ["Pipeline", "InputError", "TextStream", "default_run_dir", "number"]
