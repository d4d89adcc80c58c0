"""What the testbed's three trainers read alike: `--set key=value` overrides of a config dataclass, and where
`--quick` may write."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

TRUE, FALSE = ("true", "1"), ("false", "0")


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
                raise ValueError(f"--set {kv!r}: {key} must be a {kind.__name__}") from None
        else:
            raise ValueError(f"--set {kv!r}: {key} holds a {kind.__name__}, which --set cannot write")


def check_quick_out(quick: bool, out: str | Path, shipped: str | Path) -> None:
    """`--quick` trains a few steps (a smoke test): refuse to write its weights over the shipped ones, which are
    every trainer's default `--out` (ValueError, one line)."""
    if quick and Path(out).expanduser().resolve() == Path(shipped).expanduser().resolve():
        raise ValueError(f"--quick writes smoke-test weights; give --out DIR (the default, {shipped}, holds the "
                         "shipped weights)")


def configure(cfg: Any, pairs: list[str], quick: bool, out: str | Path, shipped: str | Path,
              check: Callable[[], Any] | None = None) -> bool:
    """A trainer's `main` before anything is built: apply `--set` (`apply_overrides`), refuse `--quick` over the
    shipped weights (`check_quick_out`) and run the trainer's own `check`; a bad one prints a one-line `error:` and
    returns False (the trainer exits 2)."""
    try:
        apply_overrides(cfg, pairs)
        check_quick_out(quick, out, shipped)
        if check is not None:
            check()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True
