"""Finding and loading reward weights from local files only.

Every built-in reward resolves its files here, in this order: an explicit path the user passed, then
``weights_dir`` (a plain folder, or a Hugging Face hub cache folder, looked up offline). Nothing is
downloaded. When a file is missing the error lists every path that was tried and says what to put there.

Checkpoints are read with safetensors or ``torch.load(weights_only=True)`` and loaded strictly:
missing or unexpected keys and wrong shapes raise :class:`CheckpointError` naming the file and keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch import Tensor, nn

from ttsvar.core.errors import MissingFileError


class WeightsNotFoundError(MissingFileError):
    """A weights/config/tokenizer file or folder the reward needs is not on disk."""


# One implementation of safe reading and strict loading for the whole project.
from ttsvar.core.checkpoint import CheckpointError, read_state_dict  # noqa: E402,F401
from ttsvar.core.checkpoint import load_strict as _load_strict  # noqa: E402


def _hf_cached_file(weights_dir: Path, repo_id: str, filename: str) -> Path | None:
    """Offline lookup of ``filename`` of ``repo_id`` in a Hugging Face hub cache folder."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(weights_dir))
    return Path(found) if isinstance(found, str) else None


def _hf_cached_dir(weights_dir: Path, repo_id: str) -> Path | None:
    """Offline lookup of the newest snapshot folder of ``repo_id`` in a Hugging Face hub cache folder."""
    repo_dir = weights_dir / _hub_name(repo_id)
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snap = repo_dir / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted((repo_dir / "snapshots").glob("*")) if (repo_dir / "snapshots").is_dir() else []
    return snaps[-1] if snaps else None


def _search(
    what: str,
    explicit: str | os.PathLike | None,
    weights_dir: str | os.PathLike | None,
    names: Sequence[str],
    ok: Callable[[Path], bool],
    hub: Sequence[tuple[str, Callable[[Path], Path | None]]],
    *,
    hint: str,
    option: str,
    kind: str,
    need: str,
) -> Path:
    """The lookup order shared by `find_file` and `find_dir`: `explicit`, then `weights_dir/<name>` for each
    name, then each `(description, lookup)` of `hub` (offline hub-cache lookups); `ok` accepts a candidate.
    Errors list every path tried and say what to put where."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if ok(p):
            return p
        raise WeightsNotFoundError(f"{what}: {option}={str(explicit)!r} is not {need}. Put it there ({hint}).")
    if weights_dir is None:
        raise WeightsNotFoundError(
            f"{what}: no {kind} given. Pass {option}=<path> or weights_dir=<folder> containing "
            f"{' or '.join(names)} ({need}; {hint})."
        )
    root = Path(weights_dir).expanduser()
    if not root.is_dir():
        raise WeightsNotFoundError(f"{what}: weights_dir={str(weights_dir)!r} is not a folder.")
    tried = []
    for name in names:
        p = root / name
        tried.append(str(p))
        if ok(p):
            return p
    for description, lookup in hub:
        tried.append(description.format(root=root))
        p = lookup(root)
        if p is not None and ok(p):
            return p
    raise WeightsNotFoundError(
        f"{what} not found. Looked for {need} at:\n  " + "\n  ".join(tried)
        + f"\nPut it at the first path ({hint}), or pass {option}=<path>."
    )


def _hub_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def find_file(
    what: str,
    *,
    explicit: str | os.PathLike | None,
    weights_dir: str | os.PathLike | None,
    names: Sequence[str],
    hf: Sequence[tuple[str, str]] = (),
    hint: str,
    option: str,
) -> Path:
    """Return the path of a weights file.

    ``names`` are paths relative to ``weights_dir``; ``hf`` are ``(repo_id, filename)`` pairs looked up
    offline when ``weights_dir`` is a hub cache. ``option`` is the constructor argument that takes an
    explicit path; ``hint`` says where the file comes from. Raises :class:`WeightsNotFoundError`.
    """
    hub = [(f"{{root}}/{_hub_name(r)}/snapshots/*/{f} (hub cache)",
            lambda root, r=r, f=f: _hf_cached_file(root, r, f)) for r, f in hf]
    return _search(what, explicit, weights_dir, names, Path.is_file, hub, hint=hint, option=option, kind="file",
                   need="a file")


def find_dir(
    what: str,
    *,
    explicit: str | os.PathLike | None,
    weights_dir: str | os.PathLike | None,
    names: Sequence[str],
    must_contain: Sequence[str],
    hf_repo: str | None = None,
    hint: str,
    option: str,
) -> Path:
    """Return a folder (Hugging Face model/tokenizer folder) holding at least one of ``must_contain``."""

    def ok(p: Path) -> bool:
        return p.is_dir() and any((p / f).is_file() for f in must_contain)

    hub = [] if hf_repo is None else [(f"{{root}}/{_hub_name(hf_repo)}/snapshots/* (hub cache)",
                                       lambda root: _hf_cached_dir(root, hf_repo))]
    return _search(what, explicit, weights_dir, names, ok, hub, hint=hint, option=option, kind="folder",
                   need=f"a folder with {' or '.join(must_contain)}")


def load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str | os.PathLike, *,
                assign: bool = False) -> None:
    """`ttsvar.core.checkpoint.load_strict` with a reward-specific hint."""
    _load_strict(module, state_dict, source, assign=assign,
                 hint="Check that the file is the right checkpoint for this reward and that the architecture "
                      "options (model name / config) match it.")
