"""Potentials, weight normalisation and resampling (numpy only).

A potential scores a candidate from its current reward r_t and the rewards seen earlier along its lineage
(TTS-VAR, arXiv 2507.18537, Sec. 3.3):

    value: exp(lam * r_t)
    diff:  exp(lam * (r_t - r_prev))        r_prev = the most recent past reward
    max:   exp(lam * max(r_t, past...))
    sum:   exp(lam * (r_t + sum(past)))
    learned: exp(lam * V_k)                 V_k from a value file (`search.value`, `ttsvar fit-value`) at the
                                            scales it was fitted for; the raw reward (value) elsewhere

With no past rewards (the first reward scale) all four reduce to value, as in the official code's
`cur_idx == 0` branch. We work with log-potentials `lam * x` and normalise in log space, so large rewards
cannot overflow `exp`.

Weight policy (one place, used by every resampling strategy):
  * NaN (a NaN reward, or NaN from inf - inf) -> weight 0;
  * any +inf log-weight -> those rows share all the mass equally;
  * otherwise weights are exp(logw - max finite logw); -inf -> 0;
  * no row with positive weight (all NaN / -inf) -> uniform over all rows.
The official code instead sets every non-NaN row to 1 as soon as one NaN appears; we keep the potentials.

Resamplers (`resampler` option; every one draws row i an expected m * p_i times, so all are unbiased):
  * multinomial: m independent draws (the official code's `torch.multinomial(..., replacement=True)`);
  * stratified:  one uniform draw in each of the m strata [j/m, (j+1)/m) of the weights' CDF;
  * systematic:  one uniform offset u, points (u + j)/m: row i gets floor(m p_i) or ceil(m p_i) copies;
  * residual:    floor(m p_i) copies of row i, the rest drawn multinomially from the remainders.
The last three are the standard low-variance schemes of sequential Monte Carlo (Douc & Cappe, 2005). With
multinomial draws a row of weight 1/m survives only with probability 1 - (1 - 1/m)^m ~ 63%, so near-uniform
weights still throw away a third of the distinct rows; systematic resampling keeps all of them.
"""

from __future__ import annotations

import math

import numpy as np

POTENTIALS = ("value", "diff", "max", "sum", "learned")
RESAMPLERS = ("multinomial", "stratified", "systematic", "residual")
VALUE_STRATEGIES = ("tts-var", "resample-only", "value")  # the strategies with a `value` option (potential learned)


def check_potential(potential: str, lam: float, has_value: bool = False, takes_value: bool = False
                    ) -> tuple[str, float]:
    """Validate the `potential` and `lam` options; errors name the option. `learned` needs a value file: the
    strategy's `value` option (`takes_value`: it has one; `has_value`: it was given)."""
    if potential not in POTENTIALS:
        raise ValueError(f"potential: {potential!r} is not one of {list(POTENTIALS)}")
    if potential == "learned" and not has_value:
        if takes_value:
            raise ValueError("value: potential 'learned' needs search.options.value=PATH (a value file written by "
                             "`ttsvar fit-value`)")
        raise ValueError(f"potential: 'learned' needs a value file, which this strategy does not take; use one of "
                         f"{list(VALUE_STRATEGIES)} with search.options.value=PATH")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)):
        raise ValueError(f"lam: expected a number, got {lam!r}")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam: {lam!r} must be finite and >= 0 (0 gives uniform resampling)")
    return potential, float(lam)


def potential_argument(rewards: np.ndarray, past: np.ndarray, potential: str) -> np.ndarray:
    """x such that the potential is exp(lam * x). `rewards` [n], `past` [n, t] (t may be 0); float64 [n]."""
    r = np.asarray(rewards, dtype=np.float64)
    past = np.asarray(past, dtype=np.float64)
    if past.ndim != 2 or past.shape[0] != r.shape[0]:
        raise ValueError(f"past rewards have shape {past.shape}, expected ({r.shape[0]}, t)")
    if past.shape[1] == 0 or potential in ("value", "learned"):  # learned: `rewards` already holds V_k
        return r
    if potential == "diff":
        return r - past[:, -1]
    if potential == "max":
        return np.maximum(r, past.max(axis=1))  # np.maximum propagates NaN, so NaN history -> weight 0
    if potential == "sum":
        return r + past.sum(axis=1)
    raise ValueError(f"potential: {potential!r} is not one of {list(POTENTIALS)}")


def learned_values(obs, model) -> np.ndarray:
    """What the `learned` potential weighs (float64 [n]): V_k (`search.value.ValueModel`) at the scales the model
    was fitted for, the raw reward elsewhere."""
    if model is not None and obs.scale in model.scales:
        return model.predict(obs)
    return np.asarray(obs.rewards, dtype=np.float64)


def log_potential(rewards: np.ndarray, past: np.ndarray, potential: str, lam: float) -> np.ndarray:
    """lam * x per row (float64 [n]); NaN stays NaN. lam = 0 gives 0 for every non-NaN row (not 0*inf=NaN)."""
    x = potential_argument(rewards, past, potential)
    if lam == 0:
        return np.where(np.isnan(x), np.nan, 0.0)
    return lam * x


def normalize_log_weights(log_weights: np.ndarray) -> np.ndarray:
    """Probabilities (float64 [n], summing to 1) from log-weights, by the policy in the module docstring."""
    lw = np.asarray(log_weights, dtype=np.float64)
    n = lw.shape[0]
    if n == 0:
        raise ValueError("normalize_log_weights: no rows")
    pos_inf = np.isposinf(lw)
    if pos_inf.any():
        return pos_inf / pos_inf.sum()
    finite = np.isfinite(lw)
    if not finite.any():
        return np.full(n, 1.0 / n)
    w = np.zeros(n)
    w[finite] = np.exp(lw[finite] - lw[finite].max())
    return w / w.sum()


def effective_sample_size(probs: np.ndarray) -> float:
    """ESS = 1 / sum(p^2) of normalised weights: n for uniform weights, 1 when one row has all the mass."""
    p = np.asarray(probs, dtype=np.float64)
    return float(1.0 / np.sum(p * p))


def check_resampler(resampler: str) -> str:
    """Validate the `resampler` option; the error names it."""
    if not isinstance(resampler, str) or resampler not in RESAMPLERS:
        raise ValueError(f"resampler: {resampler!r} is not one of {list(RESAMPLERS)}")
    return resampler


def multinomial_resample(probs: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `m` parent positions with replacement, P(i) = probs[i]; returned sorted (int64 [m]) so
    siblings are adjacent; the order carries no information."""
    p = np.asarray(probs, dtype=np.float64)
    idx = rng.choice(p.shape[0], size=m, replace=True, p=p)
    return np.sort(idx).astype(np.int64)


def _inverse_cdf(p: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Row of each point in [0, 1) under the CDF of `p`; rows of weight 0 are never hit, even where rounding
    leaves the CDF's last steps a hair below 1."""
    cdf = np.cumsum(p)  # `p` sums to 1 (`resample` normalised it)
    cdf[int(np.flatnonzero(p > 0)[-1]):] = 1.0
    return np.searchsorted(cdf, points, side="right").astype(np.int64)


def resample(probs: np.ndarray, m: int, rng: np.random.Generator, resampler: str = "multinomial") -> np.ndarray:
    """`m` parent positions drawn by `resampler` (see the module docstring), sorted (int64 [m]). `probs` are
    normalised weights (`normalize_log_weights`)."""
    check_resampler(resampler)
    if resampler == "multinomial":
        return multinomial_resample(probs, m, rng)
    p = np.asarray(probs, dtype=np.float64)
    if not (np.all(np.isfinite(p)) and np.all(p >= 0) and p.sum() > 0):
        raise ValueError("resample: weights must be finite, >= 0 and not all 0 (normalize_log_weights gives such)")
    p = p / p.sum()
    if resampler == "systematic":
        idx = _inverse_cdf(p, (rng.random() + np.arange(m)) / m)
    elif resampler == "stratified":
        idx = _inverse_cdf(p, (rng.random(m) + np.arange(m)) / m)
    else:  # residual
        copies = np.floor(m * p).astype(np.int64)
        rest = m - int(copies.sum())  # >= 0: the floors of m * p sum to at most m
        idx = np.repeat(np.arange(p.shape[0], dtype=np.int64), copies)
        if rest > 0:
            remainder = m * p - copies
            idx = np.concatenate([idx, multinomial_resample(remainder / remainder.sum(), rest, rng)])
    return np.sort(idx).astype(np.int64)
