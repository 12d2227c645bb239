"""What one ``sam3edge distill`` run is: every setting, checked before any teacher work (imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# default text-encoder steps when none are given: the stage-1 steps, but at least these. The encoder trains alone on
# cached teacher features; with 1500 steps a toy student's encoder reached 96 % of the cache's cgF1 on phrases it
# never saw, with 5000 99-100 % (benchmarks/results/text_encoder_quickstart_*.md; the cost: CHANGELOG 2026-12-04,
# eleventh session)
TEXT_STEPS_MIN = 5000


@dataclass
class DistillConfig:
    teacher: str
    images: str
    concepts: list[str]
    student: str
    out: str
    stages: list[int] = field(default_factory=lambda: [1, 2])
    steps: int = 1000  # stage 2 steps
    stage1_steps: int | None = None  # default: steps // 2
    text_steps: int | None = None  # students with a text encoder: default max(stage1, TEXT_STEPS_MIN)
    text_corpus: int = 12000  # phrases of the broad corpus their encoder is distilled on (5 % held out)
    batch: int = 4  # images per step
    pairs: int = 4  # phrases per image per step
    lr: float = 4e-4
    heads_lr_mult: float = 1.0  # stage-2 learning rate of the heads relative to lr
    stage1_lr: float = 1e-3
    amp: bool | None = None
    seed: int = 0
    init_heads: bool = True  # start the student's heads from the teacher's (widths must match)
    backbone_weights: str | None = None  # None: random; "timm": timm's pretrained (needs the hub); or a local file
    init_layers: str = "first"  # which teacher layers the student's start from: first | last | spread
    init_queries: str = "first"  # which teacher query slots: first | used (most used on the training images)
    holdout: float = 0.1  # fraction of images kept out of training for the report
    # fraction of a found phrase's stage-2 prompts that carry an exemplar box: the teacher's best instance as a
    # positive one (with the phrase, or alone) or a negative one on an instance it finds, in equal shares (the cache
    # then holds the teacher's answers to those prompts too); 0: text prompts only
    exemplars: float = 0.0
    gt_rate: float = 0.5
    cache_batch: int = 1
    target_min_score: float = 0.3
    threads: int = 0
    student_overrides: dict = field(default_factory=dict)  # e.g. {"input_size": 112}

    def __post_init__(self):
        """Refuse numbers that would train nothing, diverge or hang, naming the field (before any teacher work)."""
        import math

        def count(name, value, least):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"distill: {name} must be an integer >= {least}, got {value!r}")

        def fraction(name, value, upper_open=False):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or value > 1 or (upper_open and value == 1):
                bound = ")" if upper_open else "]"
                raise ValueError(f"distill: {name} must be a number in [0, 1{bound}, got {value!r}")

        count("steps", self.steps, 0)
        count("text_corpus", self.text_corpus, 100)
        if self.text_corpus > 1_000_000:
            raise ValueError(f"distill: text_corpus={self.text_corpus} phrases is more than the corpus builder makes "
                             "(at most 1000000)")
        for name in ("stage1_steps", "text_steps"):
            if getattr(self, name) is not None:
                count(name, getattr(self, name), 1)
        for name in ("batch", "pairs", "cache_batch"):
            count(name, getattr(self, name), 1)
        count("threads", self.threads, 0)
        if self.threads > 1024:  # a typo, not a machine: session creation would hang trying to start them
            raise ValueError(f"distill: threads={self.threads} is more than any CPU here has; use 0 (all cores) "
                             "or a core count")
        count("seed", self.seed, 0)
        fraction("exemplars", self.exemplars)
        for name in ("lr", "stage1_lr", "heads_lr_mult"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1e3:
                raise ValueError(f"distill: {name} must be a positive finite number, got {v!r}")
        bw = self.backbone_weights
        if bw is not None and (not isinstance(bw, str) or (bw != "timm" and not Path(bw).is_file())):
            raise ValueError(f"distill: backbone_weights={bw!r} is neither 'timm' (timm's pretrained weights, where "
                             "the Hugging Face hub is reachable) nor an existing weights file (.safetensors / .pth)")
        fraction("holdout", self.holdout, upper_open=True)
        fraction("gt_rate", self.gt_rate)
        fraction("target_min_score", self.target_min_score)

    @property
    def stage1(self) -> int:
        return self.stage1_steps if self.stage1_steps is not None else max(1, self.steps // 2)

    @property
    def text_encoder_steps(self) -> int:
        """Text-encoder distillation steps (students that carry a text encoder)."""
        return self.text_steps if self.text_steps is not None else max(self.stage1, TEXT_STEPS_MIN)
