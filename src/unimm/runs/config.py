"""The run configuration, as a run folder records it (config.json) and `unimm train` reads it.

`RunConfig` composes the sub-configs that live next to their code (the model's in
model/config.py, each paradigm's in paradigms/, the data's in data/worlds.py); each component
receives its own table (build_paradigm the selected paradigm's, the world its DataConfig). Three tables are defined here
instead: `TrainConfig` (the trainer's settings, train/trainer.py), `TokenizerTrainConfig` (the
image tokenizer trainer's, train/tokenizer.py) and `EvalConfig` (evaluation counts and the run's
sampling defaults, read by eval/ and by the Pipeline). Their code sits in layers above runs/
(train, eval, pipeline), which import this module; defining the tables there would make runs/
import upwards. They are plain dataclasses that import nothing above runs/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..data.worlds import DataConfig
from ..model.config import ModelConfig
from ..paradigms import PARADIGM_CONFIGS, ParadigmName
from ..paradigms.ar import ARConfig
from ..paradigms.decoupled import DecoupledConfig
from ..paradigms.flow import FlowConfig
from ..paradigms.masked import MaskedConfig
from ..paradigms.mmada import MMaDAConfig
from ..paradigms.sampling import MAX_GUIDANCE
from ..tokenizers.image import ImageTokenizerConfig
from ..utils.config import check_limits, tagged

ParadigmConfig = ARConfig | DecoupledConfig | FlowConfig | MaskedConfig | MMaDAConfig
# the token model's options, once top-level keys of the run config, now in [model]
MODEL_OPTIONS = ("code_init", "image_pos", "code_mlp", "code_latents")

PRECISIONS = ("fp32", "bf16")   # sampling precisions: eval.precision, Pipeline.load(precision=)


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """The image tokenizer trainer's settings (train/tokenizer.py, `unimm train-tokenizer`, a
    run's `[image_tokenizer]` table). Defaults match configs/tokenizer.toml (32x32 ShapesWorld)."""

    tokenizer: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    steps: int = 1500
    batch_size: int = 256            # images per step (x codes_per_image latents)
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    background_keep: float = 0.1     # share of all-black patches trained on (PatchVQ)
    init_images: int = 256           # images whose latents seed the codebook (k-means++)
    restart_every: int = 50          # steps between dead-code restarts (0 = never)
    dead_min_count: float = 1.0      # codes assigned fewer times per restart window are dead
    eval_every: int = 500
    val_images: int = 512
    test_scenes: int = 2000          # final judge / PSNR measurement (test split)
    autocast: Literal["bf16", "none"] = "bf16"
    threads: int = 0                 # torch threads; 0 leaves the default
    seed: int = 0

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"steps": (0, 100000000), "batch_size": (1, 1048576),
                              "warmup_steps": (0, 100000000), "init_images": (1, 1000000),
                              "restart_every": (0, 100000000), "eval_every": (1, 100000000),
                              "val_images": (1, 1000000), "test_scenes": (1, 1000000),
                              "threads": (0, 1024)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        for name in ("steps", "batch_size", "init_images", "eval_every", "val_images",
                     "test_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    max_steps: int = 20000            # schedule horizon; --minutes may shorten it (fixed once)
    minutes: float = 0.0              # wall-clock budget, 0 = none
    # What the cosine decay follows under a wall-clock budget: "steps" fixes a step horizon once
    # from the first 20 steps' speed (a run whose steps slow down stops before its LR decays);
    # "time" follows the elapsed fraction of the budget, so the LR reaches its floor when the
    # budget ends however the machine's speed drifts (the elapsed time is checkpointed, so a
    # resumed run continues the same curve). Without a budget both follow max_steps.
    horizon: Literal["steps", "time"] = "steps"
    # Compile the backbone for training steps (torch.compile, dynamic shapes); the compile time
    # counts in the budget. Falls back to eager, with a warning, if compiling fails.
    compile: bool = False
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: Literal["bf16", "fp32"] = "bf16"
    ema: float = 0.0                  # EMA decay of the weights, 0 = off
    eval_every: int = 500
    ckpt_every: int = 250
    log_every: int = 25
    seed: int = 0
    threads: int = 0                  # torch threads, 0 = leave as is
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Warm start: a finished run whose weights (model.safetensors) and tokenizers this run starts
    # from, with a fresh optimizer and schedule. Parameters the earlier run lacked (say, a newly
    # enabled zero-initialised module) keep their initialisation and are listed in the log.
    init_from: str = ""
    # Split each step's batch into at most this many groups of rows of similar length, each
    # padded to its own longest row: the same objective (Paradigm.loss_share) with less padding
    # when long rows (several questions per picture) mix with short ones. 1 = one padded batch.
    length_groups: int = 1
    # Index of the first training example (batch s holds examples data_offset + s*B ..): a
    # continued stage can read examples its earlier stages never saw (each starts at step 0).
    data_offset: int = 0

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"batch_size": (1, 1048576), "warmup_steps": (0, 1000000000),
                              "max_steps": (1, 1000000000), "minutes": (0, 10000000),
                              "eval_every": (0, 1000000000), "ckpt_every": (1, 1000000000),
                              "log_every": (1, 1000000000), "threads": (0, 1024),
                              "length_groups": (1, 1048576)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        if self.batch_size < 1 or self.max_steps < 1 or self.lr <= 0:
            raise ValueError("batch_size, max_steps and lr must be positive")
        if not 0 <= self.data_offset <= 900_000_000:
            raise ValueError(f"data_offset must lie in [0, 900000000], got {self.data_offset}")
        if not 1 <= self.length_groups <= self.batch_size:
            raise ValueError(f"length_groups must lie in [1, batch_size={self.batch_size}], "
                             f"got {self.length_groups}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must lie in [0, 1), got {self.ema}")


@dataclass(frozen=True)
class EvalConfig:
    """How many items the periodic (val) and final (test) evaluations use."""

    n_vqa: int = 540                  # 60 per question kind
    n_caption: int = 200
    n_t2i: int = 200
    n_geneval: int = 20               # per GenEval category
    n_edit: int = 200
    n_holdout: int = 100
    n_digits: int = 200
    # Image sampling defaults of the run (also Pipeline.generate's defaults): chosen by measuring
    # on val, recorded in the model card.
    guidance: float = 1.0
    # Editing's own guidance (an edit's source picture already pins most of the answer down, and
    # guidance can over-steer it); None = `guidance`.
    edit_guidance: float | None = None
    temperature: float = 0.0          # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    quick_fraction: float = 0.25      # periodic evaluation uses this share (VQA: all n_vqa)
    # Precision of sampling (Pipeline.answer / draw, hence eval, demo and serve): "bf16" runs
    # the network under bf16 autocast (matmuls in bf16, norms, logits and ODE states in fp32;
    # KV caches in bf16, which is what their keys and values are computed in): ~4x the matmul
    # rate on CPUs with AVX512-BF16, which pays when a step is a compute-bound span forward
    # (masked, flow, mmada) and, with compiled decoding, for token-by-token steps (their
    # library then computes in bf16: fast/decode.py); outputs may differ from fp32.
    precision: Literal["fp32", "bf16"] = "fp32"

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"n_vqa": (0, 1000000), "n_caption": (0, 1000000),
                              "n_t2i": (0, 1000000), "n_geneval": (0, 100000),
                              "n_edit": (0, 1000000), "n_holdout": (0, 1000000),
                              "n_digits": (0, 1000000)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        for name in ("guidance", "edit_guidance"):
            g = getattr(self, name)
            if g is not None and not 0 <= g <= MAX_GUIDANCE:
                raise ValueError(f"eval.{name} must lie in [0, {MAX_GUIDANCE:g}], got {g}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"eval.precision must be 'fp32' or 'bf16', got {self.precision!r}")


@dataclass(frozen=True)
class RunConfig:
    """A run: its name, its paradigm with that paradigm's own table, and the tables of the
    model, data, tokenizers, training and evaluation.

    The paradigm is a tagged union: `paradigm = "masked"` selects it and `[masked]` is its
    table (`paradigm_config`, saved under the paradigm's name). A file may also hold tables of
    other paradigms (one config for a comparison, `--set paradigm=NAME` picks): those are
    checked (a typo in them still raises) and dropped, and config.json records the selected
    table only. Options that moved into `[model]` (`MOVED`) are read there with a warning."""

    name: str = "shapes-ar"
    paradigm: ParadigmName = "ar"
    # the selected paradigm's config (None: its defaults); read and written as [<paradigm>]
    paradigm_config: ParadigmConfig | None = field(
        default=None, metadata=tagged("paradigm", PARADIGM_CONFIGS))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        dim=256, n_layers=6, n_heads=8, max_seq_len=256))
    data: DataConfig = field(default_factory=DataConfig)
    image_tokenizer: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    image_tokenizer_path: str = ""    # an already trained tokenizer folder; "" = train one
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # keys of earlier versions -> where they live now (read there, with a ConfigWarning)
    MOVED: ClassVar[dict[str, str]] = {k: f"model.{k}" for k in MODEL_OPTIONS}

    def __post_init__(self):
        want = PARADIGM_CONFIGS.get(self.paradigm)
        if want is None:
            raise ValueError(f"paradigm {self.paradigm!r} is not available; available: "
                             f"{', '.join(PARADIGM_CONFIGS)}")
        if self.paradigm_config is None:
            object.__setattr__(self, "paradigm_config", want())
        elif not isinstance(self.paradigm_config, want):
            raise ValueError(f"paradigm {self.paradigm!r} takes a {want.__name__} as its "
                             f"config, got a {type(self.paradigm_config).__name__}")
        if not isinstance(self.model, ModelConfig):          # a bare backbone shape
            object.__setattr__(self, "model", ModelConfig.of(self.model))
        if self.data.edit_turns > 1 and self.paradigm != "ar":
            raise ValueError(f"data.edit_turns > 1 (edit branches) is for paradigm 'ar'; "
                             f"paradigm {self.paradigm!r} trains one edit per picture: set "
                             f"data.edit_turns = 1")
        if self.model.code_latents and self.paradigm == "flow":
            raise ValueError("model.code_latents: paradigm 'flow' reads continuous latents, "
                             "not codes")
