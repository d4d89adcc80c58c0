"""`ttsvar fit-value`: fit a learned value V_k on the search data of finished runs (torch, CPU, minutes).

Who calls what: the CLI (`ttsvar fit-value RUN_DIR... -o value.safetensors`) calls `load_search_data` (the runs'
`search_data/*.npz`, written with `output.save_search_data=true`, plus, for `--target verdict`, the evaluator's
verdict on every final candidate), then `fit_value` (one small MLP per decision scale, 20% of the prompts held out
for validation), then `save_value` (safetensors + JSON, read back by `search.value.load_value`, which the
`learned` potential and the `value` strategy use). bench/bench_value.py calls the same three.

Inputs per decision row: [features (F), reward, log_prob, entropy], rewards in the units strategies see (raw /
the run's reward scale). Target: `reward`, the mean final reward (same units) of the row's surviving descendants;
`verdict`, the fraction of them the evaluator judges correct. Rows none of whose descendants survived have no
target and are not used (a limit of data from pruning searches: docs/value.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.value import EXTRA_INPUTS, FORMAT, json_path, load_value

from .core.errors import InputError, MissingFileError
from .output import OutputDir, atomic_write_bytes, atomic_write_json

log = logging.getLogger("ttsvar")

TARGETS = ("reward", "verdict")


@dataclass
class SearchData:
    """Decision rows with a target, pooled over runs. `group`: one id per (run, prompt) (a within-prompt ranking
    compares rows of one group); `prompt`: the prompt text (the validation split is by prompt, across runs)."""

    x: np.ndarray  # float64 [N, F + 3]
    y: np.ndarray  # float64 [N]
    scale: np.ndarray  # int64 [N]
    group: np.ndarray  # int64 [N]
    prompt: list[str]  # [N]
    feature_dim: int
    target: str
    num_scales: int
    reward_scale: float
    features: str | None = None
    reward: str | None = None
    runs: list[str] = field(default_factory=list)
    model: str | None = None


def _fingerprint(root: Path) -> dict:
    try:
        return json.loads((root / "job.json").read_text(encoding="utf-8")).get("fingerprint", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def _verdicts(root: Path, rec: dict, m: int, evaluator) -> np.ndarray:
    """The evaluator's verdict (0/1) on each of a prompt's m final candidates, by final position."""
    from PIL import Image

    md = evaluator.metadata_for(rec)
    if md is None:
        raise InputError(f"{root}: prompt {rec['index']} has no evaluator metadata; --target verdict needs a run "
                         "of a GenEval-format .jsonl prompt file (or the testbed's prompts)")
    out = np.full(m, np.nan)
    for rel in rec.get("candidates") or []:
        pos = int(Path(rel).stem.rsplit("_", 1)[1])
        with Image.open(root / rel) as im:
            out[pos] = float(evaluator.evaluate(np.asarray(im.convert("RGB")), md).correct)
    if np.isnan(out).any():
        raise InputError(f"{root}: prompt {rec['index']} has {int(np.isnan(out).sum())} of its {m} final candidates "
                         "missing; --target verdict judges every final candidate: run with "
                         "output.save_candidates=true")
    return out


# the arrays every search-data file holds that the fit reads (ttsvar.output.OutputDir.write_search_data)
SEARCH_DATA_KEYS = ("prompt_index", "reward_scale", "features", "num_scales", "final_mean", "final_row_id",
                    "final_ancestor", "scale", "reward", "log_prob", "entropy")


def load_search_data(run_dirs: list[str | Path], target: str = "reward", evaluator: str = "shapes") -> SearchData:
    """Every decision row with a target from the runs' `search_data/`. Errors (`InputError`) name the run."""
    if target not in TARGETS:
        raise InputError(f"--target {target!r}: use one of {list(TARGETS)}")
    ev = None
    if target == "verdict":
        from .eval.registry import create_evaluator

        ev = create_evaluator(evaluator, field="--evaluator")
    xs, ys, scales, groups, prompts = [], [], [], [], []
    meta: dict = {}
    n_groups = stale = 0
    for run in run_dirs:
        root = Path(run).expanduser()
        out = OutputDir(root, create=False)
        files = sorted((root / "search_data").glob("*.npz"))
        if not files:
            saved = _fingerprint(root) and (root / "search_data").is_dir()
            raise MissingFileError(f"{root} has no search_data/*.npz: " + (
                "its job saved none (a strategy without decisions, such as best-of-n, or no prompt finished); fit "
                "on runs of a strategy that decides between scales" if saved else
                "run the job with output.save_search_data=true"))
        records = out.done(warn=False)
        fp = _fingerprint(root)
        for f in files:
            try:
                with np.load(f) as z:
                    d = {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise InputError(f"{f}: not a readable search-data file ({type(e).__name__}: {e}); delete it and "
                                 "re-run that job to write it again, or leave the run out") from None
            missing = [k for k in SEARCH_DATA_KEYS if k not in d]
            if missing:
                raise InputError(f"{f}: not a search-data file of ttsvar (no {', '.join(missing)}); leave it out")
            p = int(d["prompt_index"])
            rec = records.get(p)
            if rec is None:
                continue  # a prompt redone after its data was written: its manifest line decides
            scale_r = float(d["reward_scale"])
            if d["features"].shape[1] == 0:
                raise InputError(f"{f}: no preview features were stored")
            if not _matches_record(d, rec):
                stale += 1  # written for an earlier text of the prompt, redone since without search data
                continue
            this = {"feature_dim": int(d["features"].shape[1]), "num_scales": int(d["num_scales"]),
                    "reward_scale": scale_r, "features": fp.get("search.features"), "reward": fp.get("reward.name"),
                    "model": fp.get("model.name")}
            for k, v in this.items():
                if meta.setdefault(k, v) != v:
                    raise InputError(f"{f}: {k} = {v!r}, but earlier runs have {meta[k]!r}; fit runs of one "
                                     "model, reward and feature extractor together")
            if target == "reward":
                y = d["final_mean"].astype(np.float64) / scale_r
            else:
                verdict = _verdicts(root, rec, len(d["final_row_id"]), ev)
                anc = d["final_ancestor"]
                total, count = np.zeros(len(d["scale"])), np.zeros(len(d["scale"]))
                for j in range(anc.shape[0]):
                    total[anc[j]] += verdict[j]
                    count[anc[j]] += 1
                y = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            keep = np.isfinite(y)
            extra = np.stack([d["reward"].astype(np.float64) / scale_r, d["log_prob"], d["entropy"]], axis=1)
            xs.append(np.concatenate([d["features"].astype(np.float64), extra], axis=1)[keep])
            ys.append(y[keep])
            scales.append(d["scale"][keep])
            groups.append(np.full(int(keep.sum()), n_groups, np.int64))
            prompts += [rec["prompt"]] * int(keep.sum())
            n_groups += 1
    if stale:
        log.warning("left out %d search-data file(s) whose picked row is not their prompt's manifest record (the "
                    "prompt was redone since without output.save_search_data)", stale)
    if not xs or sum(len(y) for y in ys) == 0:
        raise InputError(f"no decision rows with a surviving descendant in {[str(r) for r in run_dirs]}")
    return SearchData(np.concatenate(xs), np.concatenate(ys), np.concatenate(scales).astype(np.int64),
                      np.concatenate(groups), prompts, meta["feature_dim"], target, meta["num_scales"],
                      meta["reward_scale"], meta["features"], meta["reward"], [str(r) for r in run_dirs],
                      meta["model"])


def check_value_fit(vm, dim: int | None, job_side: dict[str, str], reward_scale: float) -> None:
    """A learned value (`search.options.value`, loaded as `vm`) reads the features, rewards (in its reward's
    scale) and model it was fitted on: refuse another feature dimension (`dim`), model, feature extractor or
    reward (`job_side`) or reward scale before any unit runs (`ConfigError` naming the file; a file written
    before a field was recorded is not checked on it)."""
    from .core.errors import ConfigError

    if vm is None:
        return
    if isinstance(dim, int) and dim != vm.feature_dim:
        raise ConfigError(f"search.options.value: {vm.path} was fitted on {vm.feature_dim}-d features "
                          f"({vm.config.get('features')}), but search.features gives {dim}-d; use the features it "
                          "was fitted with")
    for key, have in job_side.items():
        fitted = vm.config.get(key)
        if fitted is not None and fitted != have:
            raise ConfigError(f"search.options.value: {vm.path} was fitted on runs of {key} {fitted!r}, but this job "
                              f"uses {have!r}; fit a value on runs of this job's {key} (`ttsvar fit-value`)")
    fitted = vm.config.get("reward_scale")
    if isinstance(fitted, (int, float)) and not math.isclose(fitted, reward_scale, rel_tol=1e-6):
        raise ConfigError(f"search.options.value: {vm.path} was fitted on rewards in units of {fitted:.6g}, but this "
                          f"job's reward scale is {reward_scale:.6g} (reward.score_scale); use the scale it was "
                          "fitted with")


def _matches_record(d: dict, rec: dict) -> bool:
    """The search data's picked final row is the manifest record's (its row id and reward)."""
    try:
        picked = int(d["picked"])
        return int(d["final_row_id"][picked]) == int(rec["row_id"]) and \
            math.isclose(float(d["final_reward"][picked]), float(rec["reward"]), rel_tol=1e-6, abs_tol=1e-9)
    except (KeyError, IndexError, TypeError, ValueError):
        return True  # an older file or record without these fields: not checkable


def split_prompts(prompts: list[str], fraction: float = 0.2, seed: int = 0) -> set[str]:
    """The held-out prompt texts: `fraction` of the distinct prompts (at least one when there are two or more),
    chosen by a seeded permutation."""
    distinct = sorted(set(prompts))
    if len(distinct) < 2:
        return set()
    k = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    order = np.random.default_rng(seed).permutation(len(distinct))
    return {distinct[i] for i in order[:k]}


def within_prompt(score: np.ndarray, target: np.ndarray, group: np.ndarray) -> dict:
    """Mean over groups of the Spearman rank correlation of `score` with `target`, and of the pairwise
    concordance P(score_i > score_j | target_i > target_j) (ties half; the AUROC for 0/1 targets). Groups with
    fewer than 2 rows or a constant target are skipped; a score constant within a group counts as 0 / 0.5.
    `per_group` lists (group id, rho, concordance) of the counted groups: paired comparisons of two scores and
    standard errors over groups read them."""
    from scipy.stats import rankdata

    rhos, concs, ids = [], [], []
    for g in np.unique(group):
        s, t = score[group == g], target[group == g]
        if len(t) < 2 or np.ptp(t) == 0:
            continue
        ids.append(int(g))
        if np.ptp(s) == 0:
            rhos.append(0.0)
        else:
            rhos.append(float(np.corrcoef(rankdata(s), rankdata(t))[0, 1]))
        gt = t[:, None] > t[None, :]
        diff = s[:, None] - s[None, :]
        concs.append(float(((diff > 0) + 0.5 * (diff == 0))[gt].mean()))
    return {"rho": float(np.mean(rhos)) if rhos else float("nan"),
            "concordance": float(np.mean(concs)) if concs else float("nan"), "groups": len(rhos),
            "per_group": list(zip(ids, rhos, concs))}


def fit_value(data: SearchData, hidden: int = 32, epochs: int = 400, lr: float = 3e-3, weight_decay: float = 1e-3,
              val_fraction: float = 0.2, seed: int = 0, threads: int | None = None) -> tuple[dict, dict]:
    """One MLP (F + 3 -> hidden -> 1, ReLU) per decision scale, full-batch Adam on the training prompts, the
    epoch with the lowest validation loss kept. Returns (per scale: {weights, biases, norm}, metrics)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(min(int(threads), os.cpu_count() or 1))  # more threads than cores only slows it
    try:  # the caller's thread count back afterwards: a library call should not change the process's
        return _fit_value(data, hidden, epochs, lr, weight_decay, val_fraction, seed)
    finally:
        torch.set_num_threads(before)


def _fit_value(data: SearchData, hidden: int, epochs: int, lr: float, weight_decay: float, val_fraction: float,
               seed: int) -> tuple[dict, dict]:
    import torch

    held = split_prompts(data.prompt, val_fraction, seed)
    is_val = np.asarray([p in held for p in data.prompt])
    models, metrics = {}, {"held_out_prompts": len(held), "prompts": len(set(data.prompt)), "scales": {}}
    for k in sorted(set(data.scale.tolist())):
        at = data.scale == k
        tr, va = at & ~is_val, at & is_val
        if tr.sum() < 2:
            continue
        x_tr = np.where(np.isfinite(data.x[tr]), data.x[tr], np.nan)  # inf too: non-finite inputs become the mean
        with warnings.catch_warnings():  # a column with no finite value (no token statistics): mean 0, std 1
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x_tr, axis=0)
            std = np.nanstd(x_tr, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
        if data.target == "verdict":
            y_mean, y_std = 0.0, 1.0
        else:
            y_mean, y_std = float(data.y[tr].mean()), float(max(data.y[tr].std(), 1e-6))

        def prep(x: np.ndarray, mean: np.ndarray = mean, std: np.ndarray = std) -> torch.Tensor:
            z = (x - mean) / std
            return torch.as_tensor(np.where(np.isfinite(z), z, 0.0), dtype=torch.float32)

        gen = torch.Generator().manual_seed(seed * 1000 + k)
        net = torch.nn.Sequential(torch.nn.Linear(data.x.shape[1], hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(hidden, 1))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / np.sqrt(p.shape[-1])))
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        xt, yt = prep(x_tr), torch.as_tensor((data.y[tr] - y_mean) / y_std, dtype=torch.float32)
        xv, yv = prep(data.x[va]), torch.as_tensor((data.y[va] - y_mean) / y_std, dtype=torch.float32)
        loss_fn = torch.nn.functional.binary_cross_entropy_with_logits if data.target == "verdict" \
            else torch.nn.functional.mse_loss
        best, best_state, first, last = float("inf"), None, None, None
        for _ in range(epochs):
            opt.zero_grad()
            loss = loss_fn(net(xt)[:, 0], yt)
            loss.backward()
            opt.step()
            with torch.no_grad():
                train_loss = float(loss_fn(net(xt)[:, 0], yt))
                val_loss = float(loss_fn(net(xv)[:, 0], yv)) if len(yv) else train_loss
            first = train_loss if first is None else first
            last = train_loss
            if val_loss < best:
                best, best_state = val_loss, [p.detach().clone() for p in net.parameters()]
        with torch.no_grad():
            for p, b in zip(net.parameters(), best_state):
                p.copy_(b)
        layers = [m for m in net if isinstance(m, torch.nn.Linear)]
        models[k] = {"weights": [m.weight.detach().numpy().astype(np.float32) for m in layers],
                     "biases": [m.bias.detach().numpy().astype(np.float32) for m in layers],
                     "norm": {"mean": mean.tolist(), "std": std.tolist(), "y_mean": y_mean, "y_std": y_std}}
        entry = {"train_rows": int(tr.sum()), "val_rows": int(va.sum()), "train_loss_first": first,
                 "train_loss_last": last, "val_loss_best": best}
        if va.sum():
            with torch.no_grad():
                out = net(xv)[:, 0].numpy().astype(np.float64)
            v = 1 / (1 + np.exp(-out)) if data.target == "verdict" else y_mean + y_std * out
            for name, score in (("value", v), ("raw_reward", data.x[va, -3])):
                m = within_prompt(score, data.y[va], data.group[va])
                entry[name] = {key: m[key] for key in ("rho", "concordance", "groups")}
        metrics["scales"][str(k)] = entry
    if not models:
        raise InputError("too few decision rows to fit a value model (fewer than 2 training rows at every scale)")
    return models, metrics


def save_value(path: str | Path, data: SearchData, models: dict, metrics: dict, options: dict) -> tuple[Path, Path]:
    """Write `path` (safetensors: scale{k}.{i}.weight/bias) and its JSON beside; check both load strictly."""
    from safetensors.numpy import save

    path = Path(path).expanduser()
    tensors = {}
    for k, m in models.items():
        for i, (w, b) in enumerate(zip(m["weights"], m["biases"])):
            tensors[f"scale{k}.{i}.weight"], tensors[f"scale{k}.{i}.bias"] = w, b
    first = next(iter(models.values()))
    config = {"format": FORMAT, "scales": sorted(int(k) for k in models), "feature_dim": data.feature_dim,
              "layers": len(first["weights"]), "output": "sigmoid" if data.target == "verdict" else "identity",
              "inputs": [f"features[{data.feature_dim}]", *EXTRA_INPUTS], "target": data.target,
              "num_scales": data.num_scales, "reward_scale": data.reward_scale, "features": data.features,
              "reward": data.reward, "model": data.model, "runs": data.runs, "train": options,
              "norm": {str(k): m["norm"] for k, m in models.items()}, "metrics": metrics}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save(tensors))
        atomic_write_json(json_path(path), config)
    except OSError as e:
        raise InputError(f"-o {path}: cannot write the value file ({e.strerror or e}); give another path") from None
    load_value(path)  # what a search will read
    return path, json_path(path)


def format_metrics(metrics: dict, target: str) -> str:
    """The per-scale table `ttsvar fit-value` prints: within-prompt rank correlation with the target of V_k and
    of the raw scale-k reward on the held-out prompts (and the pairwise concordance, the AUROC for verdicts)."""
    conc = "AUROC" if target == "verdict" else "concord."
    lines = [f"| scale | train rows | val rows | val groups | rho V_k | rho reward | {conc} V_k | {conc} reward |",
             "|---|---|---|---|---|---|---|---|"]
    for k, e in metrics["scales"].items():
        v, r = e.get("value", {}), e.get("raw_reward", {})
        nan = float("nan")
        lines.append(f"| {k} | {e['train_rows']} | {e['val_rows']} | {v.get('groups', 0)} | {v.get('rho', nan):.3f} "
                     f"| {r.get('rho', nan):.3f} | {v.get('concordance', nan):.3f} | {r.get('concordance', nan):.3f} |")
    return "\n".join(lines)


def run_fit_value(run_dirs: list[str], out: str, target: str = "reward", evaluator: str = "shapes",
                  hidden: int = 32, epochs: int = 400, seed: int = 0, threads: int | None = None) -> dict:
    """The whole command: load, fit, save, and return {path, json, metrics, seconds}."""
    t0 = time.perf_counter()
    for name, value, low in (("--hidden", hidden, 1), ("--epochs", epochs, 1), ("--threads", threads, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise InputError(f"{name} {value!r}: must be an integer >= {low}")
    dirs = [Path(d).expanduser().resolve() for d in run_dirs]
    if len(set(dirs)) != len(dirs):
        twice = ", ".join(sorted({str(d) for d in dirs if dirs.count(d) > 1}))
        raise InputError(f"a run folder is given twice ({twice}); its rows would count twice: give each once")
    dest = Path(out).expanduser()
    if dest.is_dir():
        raise InputError(f"-o {out}: is a folder; give the value file's path (e.g. {dest / 'value.safetensors'})")
    if json_path(dest) == dest:  # the weights and their JSON would be one file: the JSON would overwrite them
        raise InputError(f"-o {out}: the value file's config is written beside it as .json; give the weights' "
                         f"path, e.g. {dest.with_suffix('.safetensors')}")
    missing = [d for d in run_dirs if not Path(d).expanduser().is_dir()]
    if missing:
        raise MissingFileError(f"run folder {missing[0]} does not exist: give the output.dir of a job run with "
                               "output.save_search_data=true")
    data = load_search_data(run_dirs, target, evaluator)
    options = {"hidden": hidden, "epochs": epochs, "seed": seed, "val_fraction": 0.2, "rows": int(len(data.y))}
    models, metrics = fit_value(data, hidden=hidden, epochs=epochs, seed=seed, threads=threads)
    path, jpath = save_value(out, data, models, metrics, options)
    return {"path": str(path), "json": str(jpath), "metrics": metrics, "seconds": time.perf_counter() - t0,
            "table": format_metrics(metrics, target)}
