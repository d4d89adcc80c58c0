"""The step-wise generator interface every next-scale model implements.

A search drives a generator one scale at a time, like a diffusers pipeline drives a scheduler:

    gen.set_sampling(sampling)                  # once per job: cfg / tau per scale, top-k, top-p
    state = gen.start(prompts, rows)            # prompts: {prompt index: text}; rows: index, candidate id, seed
    for k in range(gen.num_scales):
        state = gen.step(state)                 # sample scale k for every row (CFG inside)
        if k is a decision scale:
            imgs = gen.preview(state, size)     # decode what each row has so far (cheap=True: at scale k's grid)
            state = gen.select(state, keep)     # rows live, die or branch (duplicates allowed)
    images = gen.finish(state)

States of rows at the same scale can be packed together (`concat`) and cut into memory-bounded chunks
(`split`). Sampling randomness of a row depends only on (seed, candidate id, scale), so a row's output
never depends on which rows share its batch. Who calls what: the engine (`ttsvar/engine.py`) or a Ray
actor (`cluster/`) calls every method; search strategies never see a state, only `Rows` ids and arrays.

Compute accounting: a row at scale k costs `tokens_at_scale(k) * forward_rows_per_candidate(k)` transformer
token forwards (the engine's `token_forwards` counter); `state_bytes_per_row(k)` sizes work units.
`tests/test_generator.py` checks this contract on every registered generator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .classes import ClassList

_MASK64 = (1 << 64) - 1


def mix64(*values: int) -> int:
    """Deterministically mix integers into a 63-bit seed (splitmix64 finaliser per value)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


@dataclass
class Rows:
    """Identity of each candidate row, kept on the CPU (it crosses process boundaries)."""

    prompt_index: np.ndarray  # int64 [B] which prompt (line of the job's prompt file)
    candidate_id: np.ndarray  # int64 [B] candidate within the prompt's group; keys the row's randomness
    seed: np.ndarray  # int64 [B] the prompt's seed

    def __post_init__(self):
        self.prompt_index = np.asarray(self.prompt_index, dtype=np.int64).reshape(-1)
        self.candidate_id = np.asarray(self.candidate_id, dtype=np.int64).reshape(-1)
        self.seed = np.asarray(self.seed, dtype=np.int64).reshape(-1)
        n = len(self.prompt_index)
        if len(self.candidate_id) != n or len(self.seed) != n:
            raise ValueError(f"Rows fields differ in length: prompt_index {n}, candidate_id "
                             f"{len(self.candidate_id)}, seed {len(self.seed)}")

    def __len__(self) -> int:
        return len(self.prompt_index)

    @classmethod
    def for_prompts(cls, n_per_prompt: int, seeds: Sequence[int], prompt_indices: Sequence[int] | None = None) -> Rows:
        """`n_per_prompt` candidates (ids 0..n-1) for each prompt."""
        idx = list(range(len(seeds))) if prompt_indices is None else list(prompt_indices)
        return cls(np.repeat(idx, n_per_prompt), np.tile(np.arange(n_per_prompt), len(idx)),
                   np.repeat(np.asarray(seeds, dtype=np.int64), n_per_prompt))

    def select(self, index: np.ndarray, candidate_id: np.ndarray | None = None) -> Rows:
        index = np.asarray(index, dtype=np.int64)
        cand = self.candidate_id[index] if candidate_id is None else candidate_id
        return Rows(self.prompt_index[index], cand, self.seed[index])

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        return Rows(np.concatenate([p.prompt_index for p in parts]), np.concatenate([p.candidate_id for p in parts]),
                    np.concatenate([p.seed for p in parts]))

    def step_seeds(self, scale: int) -> list[int]:
        """The seed of each row's sampling noise at `scale`."""
        return [mix64(s, c, scale) for s, c in zip(self.seed.tolist(), self.candidate_id.tolist())]


def _per_scale(value: float | Sequence[float], n: int, name: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    vals = [float(v) for v in value]
    if len(vals) != n:
        raise ValueError(f"sampling.{name} has {len(vals)} entries but the model has {n} scales; "
                         f"give one value or exactly {n}")
    return vals


@dataclass
class SamplingConfig:
    """How each scale is sampled. Lists give one value per scale."""

    cfg: float | list[float] = 3.0  # classifier-free guidance weight on the logits (1 = no guidance)
    tau: float | list[float] = 0.5  # temperature
    top_k: int = 900  # 0 = off; on bitwise heads each bit has only 2 choices, so top_k >= 2 is a no-op
    top_p: float = 0.97  # 0 = off

    def per_scale(self, num_scales: int) -> tuple[list[float], list[float]]:
        cfg = _per_scale(self.cfg, num_scales, "cfg")
        tau = _per_scale(self.tau, num_scales, "tau")
        if any(t <= 0 for t in tau):
            raise ValueError(f"sampling.tau must be > 0, got {tau}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
        return cfg, tau


# What `Generator.start` reads prompts from: prompt index -> text (a list maps its positions).
Prompts = Mapping[int, str] | Sequence[str]


class GenState(ABC):
    """Per-row state of a batch of candidate paths; opaque to everything but its generator."""

    rows: Rows
    scale: int  # number of scales sampled so far (0 .. num_scales)
    # float32 [B, 2] (mean log-probability, mean entropy) of the tokens each row sampled at scale `scale - 1`,
    # or None; read through `Generator.confidence`
    confidence: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)


class Generator(ABC):
    """A next-scale generator that can be driven, forked and pruned one scale at a time."""

    #: (h, w) token grid of each scale, coarse to fine
    scale_schedule: list[tuple[int, int]]
    device: torch.device
    #: a class-conditional model's classes (its prompts are class indices, `"207"`); None: a text model
    classes: ClassList | None = None
    #: run forwards so that a row's result does not depend on the other rows of its batch (bit for bit), as
    #: `ttsvar.models.invariant` does for the built-in families (others ignore it); the job sets it from
    #: `runtime.batch_invariant`.
    batch_invariant: bool = False

    @property
    def conditioning(self) -> str:
        """What a prompt is to this model: "text" or "class" (an index into `classes`)."""
        return "text" if self.classes is None else "class"

    @property
    def num_scales(self) -> int:
        return len(self.scale_schedule)

    @abstractmethod
    def set_sampling(self, sampling: SamplingConfig) -> None:
        """Use `sampling` from the next `start` on (like a diffusers scheduler's `set_timesteps`): called once
        per job. Raises ValueError (naming `sampling.<field>`) for per-scale lists of the wrong length."""

    def tokens_at_scale(self, k: int) -> int:
        """Transformer tokens one forward row computes at scale k: the h * w of the scale's token grid."""
        h, w = self.scale_schedule[k]
        return h * w

    @abstractmethod
    def forward_rows_per_candidate(self, k: int) -> int:
        """Rows the transformer forwards per candidate row at scale k under the current sampling: 2 with
        classifier-free guidance (a conditional and an unconditional row), 1 without. The engine's compute
        counters multiply it with `tokens_at_scale(k)`."""

    def state_bytes_per_row(self, k: int) -> int | None:
        """About the bytes one candidate row holds once scale k is sampled (caches, latents), or None when
        unknown; `ttsvar.jobs.check_memory` sizes work units with it."""
        return None

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError if the generator cannot read `prompt` (words its text encoder does not know, too
        many tokens). Called for every prompt before a job runs; the default accepts everything."""
        return None

    @abstractmethod
    def start(self, prompts: Prompts, rows: Rows) -> GenState:
        """New paths at scale 0: row i is conditioned on prompts[rows.prompt_index[i]]. The engine passes
        {prompt index: text} holding only the prompts of one work unit (indices are lines of the job's prompt
        file, not positions); a list is the same mapping with positions as indices."""

    @abstractmethod
    def step(self, state: GenState) -> GenState:
        """Sample the next scale of every row; returns the advanced state (may reuse the input's storage)."""

    @abstractmethod
    def preview(self, state: GenState, size: int | None = None, rows: Sequence[int] | None = None,
                cheap: bool = False) -> torch.Tensor:
        """Decode the accumulated latent of each row (or of `rows` only): [B,3,H,W] float in [0,1],
        resized to size x size if given.

        cheap: decode the latent downsampled to the token grid of the scale last sampled (with the VAE's own
        down-mode) instead of the final grid, so the decoder computes (h_k * w_k) / (H * W) of the pixels: a
        smaller picture of what the row holds so far, all a decision at an early scale can see anyway. The
        engine asks for it with `runtime.preview: cheap`; rewards and features resize their inputs themselves.
        At the last scale it equals the full decode. `preview_grid` says which latent grid gets decoded."""

    def preview_grid(self, scale: int, cheap: bool = False) -> tuple[int, int]:
        """The latent grid (h, w) that `preview(state, cheap=cheap)` decodes for a state at `scale` (1 ..
        num_scales): the final scale's grid, or with `cheap` the grid of scale `scale - 1`. Generators whose
        latent grid is not the token grid (Infinity's 2x2 patchify) override it."""
        if not 1 <= scale <= self.num_scales:
            raise ValueError(f"preview_grid needs a sampled scale in [1, {self.num_scales}], got {scale}")
        return self.scale_schedule[scale - 1 if cheap else -1]

    def confidence(self, state: GenState) -> np.ndarray | None:
        """Free per-row token statistics of the scale `step` last sampled: float32 [B, 2], column 0 the mean
        log-probability and column 1 the mean entropy (nats per token) of each row's sampled tokens under the
        distribution it sampled from (after guidance and temperature, before top-k/top-p), or None when the
        generator does not report them. The engine reads it after the step that ends at a decision scale and
        hands it to the strategy (`Observation.log_prob`, `.entropy`). The default reads `state.confidence`,
        which the built-in families fill from `ttsvar.models.sampling.sample_with_confidence`."""
        c = getattr(state, "confidence", None)
        return None if c is None else c.detach().float().cpu().numpy()

    def row_keys(self, state: GenState) -> list[bytes] | None:
        """A fingerprint per row that is equal exactly when two rows hold the same accumulated latent, or
        None. The engine decodes and scores only one row of each set of equal rows (of the same prompt),
        which saves work at coarse scales and makes equal rows get bit-identical scores, so ties are
        broken the same way whatever the batch layout."""
        return None

    @abstractmethod
    def select(self, state: GenState, index: Sequence[int] | np.ndarray,
               candidate_id: np.ndarray | None = None) -> GenState:
        """Gather rows (duplicates allowed, any order). New candidate ids re-key the rows' randomness."""

    @abstractmethod
    def concat(self, states: Sequence[GenState]) -> GenState:
        """Pack states at the same scale into one batch."""

    @abstractmethod
    def split(self, state: GenState, sizes: Sequence[int]) -> list[GenState]:
        """Cut a state into consecutive parts of the given row counts."""

    @abstractmethod
    def finish(self, state: GenState, rows: Sequence[int] | None = None) -> torch.Tensor:
        """Final images [B,3,H,W] float in [0,1] (of `rows` only, if given); needs state.scale == num_scales."""
