"""What the testbed's trainers check alike before anything is built: `--set key=value` overrides of a config
dataclass and their ranges, `--seed`/`--threads`/`--device`/`--out`, and where `--quick` may write."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

TRUE, FALSE = ("true", "1"), ("false", "0")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # the shipped weights: `--quick` never writes here
# numeric config fields that must be > 0 (by the end of their name); every other number must be finite and >= 0,
# and a probability at most 1
_POSITIVE = ("steps", "batch", "lr", "examples", "per_prompt", "per_batch", "depth", "dim", "heads", "width", "ch",
             "size", "bits", "layers", "restart_every", "Cvae", "views")
_PROBABILITY = ("cond_drop", "p_distractor", "augment", "tag_balance")
_MINUS_ONE_UNSET = ("data_seed",)  # -1 means "not set" (the trainer falls back to another field)


def apply_overrides(cfg: Any, pairs: list[str]) -> None:
    """Set each `key=value` of `pairs` on the dataclass instance `cfg`, converted to the type of the field's
    current value (int, float, str; booleans read as true/false/1/0, since bool("false") is True). Called by a
    trainer's `main` before anything is built; a bad pair raises ValueError with a one-line message naming it."""
    names = sorted(f.name for f in fields(cfg))
    for kv in pairs:
        key, sep, val = kv.partition("=")
        if not sep or key not in names:
            raise ValueError(f"--set {kv!r}: expected key=value with key in {names}")
        kind = type(getattr(cfg, key))
        if kind is bool:
            if val.lower() not in TRUE + FALSE:
                raise ValueError(f"--set {kv!r}: {key} is true or false")
            setattr(cfg, key, val.lower() in TRUE)
        elif kind in (int, float, str):
            try:
                setattr(cfg, key, kind(val))
            except ValueError:
                what = {int: "an integer", float: "a number", str: "a string"}[kind]
                raise ValueError(f"--set {kv!r}: {key} must be {what}") from None
        else:
            raise ValueError(f"--set {kv!r}: {key} holds a {kind.__name__}, which --set cannot write")


def check_ranges(cfg: Any) -> None:
    """Every number of the config dataclass `cfg` in its range (ValueError naming the `--set` key): steps, batch
    sizes, learning rates and widths > 0 (0 steps silently saved untrained weights), the rest finite and >= 0."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            raise ValueError(f"--set {f.name}={v}: must be a finite number")
        if f.name.endswith(_POSITIVE) and v <= 0:
            raise ValueError(f"--set {f.name}={v}: must be > 0")
        if v < 0 and not (f.name in _MINUS_ONE_UNSET and v == -1):
            raise ValueError(f"--set {f.name}={v}: must be >= 0" + (" (or -1: unset)" if f.name in _MINUS_ONE_UNSET
                                                                     else ""))
        if f.name in _PROBABILITY and v > 1:
            raise ValueError(f"--set {f.name}={v}: is a probability, at most 1")


def check_buildable(build: Callable[[], Any]) -> None:
    """`build()` (the trainer's models from its config) on the meta device, so that settings the architecture
    cannot take (`vae_norm_groups=5`) fail in a second with one line, not after minutes of data."""
    import torch

    try:
        with torch.device("meta"):
            build()
    except (ValueError, AssertionError, RuntimeError, TypeError, ZeroDivisionError) as e:
        raise ValueError(f"--set: the models cannot be built with these settings: {str(e).splitlines()[0]}") from None


def check_quick_out(quick: bool, out: str | Path, shipped: str | Path) -> None:
    """`--quick` trains a few steps (a smoke test): refuse to write its weights anywhere in the package's shipped
    weights folder, which holds every trainer's default `--out` (ValueError, one line)."""
    if not quick:
        return
    target = Path(out).expanduser().resolve()
    if target == WEIGHTS_DIR or WEIGHTS_DIR in target.parents:
        raise ValueError(f"--quick writes smoke-test weights; give --out outside {WEIGHTS_DIR}, the folder of "
                         f"the shipped weights (this trainer's default: {shipped})")


def check_run_args(out: str | Path, out_is_folder: bool, seed: int | None = None, threads: int | None = None,
                   device: str | None = None, out_suffix: str | None = None) -> None:
    """The trainer's own arguments (ValueError, one line): `--out` of the right kind (and suffix, if given) with a
    parent that can be made, `--seed` >= 0, `--threads` >= 0 (0: torch's default), `--device` cpu or an available
    cuda."""
    path = Path(out).expanduser()
    if not str(out).strip():
        raise ValueError("--out is empty")
    if out_is_folder and path.exists() and not path.is_dir():
        raise ValueError(f"--out {out}: is a file; this trainer writes a folder of weights")
    if not out_is_folder and path.is_dir():
        raise ValueError(f"--out {out}: is a folder; give the weights file to write "
                         f"(e.g. {path / 'model.safetensors'})")
    if out_suffix and path.suffix != out_suffix:
        # the JSON record is written to the same name with .json: `model.v2` and `model.v1` would share `model.json`
        raise ValueError(f"--out {out}: give a {out_suffix} file (its JSON record goes beside it, "
                         f"{path.with_suffix('.json').name})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, so the output cannot be made there")
            break
    if seed is not None and seed < 0:
        raise ValueError(f"--seed {seed}: must be >= 0")
    if threads is not None and threads < 0:
        raise ValueError(f"--threads {threads}: must be >= 1 (or 0 for torch's default)")
    if device is not None:
        import torch

        kind = device.split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"--device {device!r}: use cpu or cuda")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")


def configure(cfg: Any, pairs: list[str], quick: bool, out: str | Path, shipped: str | Path,
              check: Callable[[], Any] | None = None, *, out_is_folder: bool = True, seed: int | None = None,
              threads: int | None = None, device: str | None = None, out_suffix: str | None = None) -> bool:
    """A trainer's `main` before anything is built: apply `--set` (`apply_overrides`) and check the ranges
    (`check_ranges`), its arguments (`check_run_args`), refuse `--quick` into the shipped weights
    (`check_quick_out`) and run the trainer's own `check`; a bad one prints a one-line `error:` and returns False
    (the trainer exits 2)."""
    try:
        apply_overrides(cfg, pairs)
        check_run_args(out, out_is_folder, seed, threads, device, out_suffix)
        check_ranges(cfg)
        check_quick_out(quick, out, shipped)
        if check is not None:
            check()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True
