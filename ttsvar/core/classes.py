"""Class lists of class-conditional models, and reading a class from a prompt.

A class model's prompt names a class: its index (`207`) or one of its names (`golden retriever`), matched
case-insensitively against every name of the class (ImageNet classes carry several WordNet lemmas: `tench`,
`Tinca tinca`). A name that several classes carry (`crane`: the bird and the machine) is refused with the
indices to choose from. The engine passes a class prompt on as its index written as text (`"207"`), which is
what class generators and class rewards read (`parse_class_prompt`).

`imagenet_classes()` is the ImageNet-1k list shipped with the package (`imagenet_classes.txt`: generated from
timm's ImageNet info (Apache-2.0); the names are WordNet 3.0 lemmas, WordNet license).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

_DATA = Path(__file__).with_name("imagenet_classes.txt")


@dataclass(frozen=True)
class ClassList:
    """The classes of a class-conditional model: `names[k]` holds the names of class k (the first is its short
    name)."""

    names: tuple[tuple[str, ...], ...]
    _lookup: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        lookup: dict[str, list[int]] = {}
        for k, names in enumerate(self.names):
            for n in names:
                ids = lookup.setdefault(n.casefold(), [])
                if k not in ids:
                    ids.append(k)
        object.__setattr__(self, "_lookup", lookup)

    def __len__(self) -> int:
        return len(self.names)

    def name(self, k: int) -> str:
        """The short name of class k."""
        return self.names[k][0]

    def first(self, n: int) -> ClassList:
        """The first n classes (a small model labelled with a prefix of a larger list)."""
        return ClassList(self.names[:n])

    def resolve(self, spec: int | str) -> int:
        """The index of the class `spec` names (an int, a string of digits or a name); ValueError saying why
        not (out of range, unknown, ambiguous)."""
        n = len(self.names)
        if isinstance(spec, bool) or not isinstance(spec, (int, str)):
            raise ValueError(f"{spec!r} is not a class (give an index in [0, {n}) or a class name)")
        text = spec.strip() if isinstance(spec, str) else str(spec)
        if text.isascii() and text.lstrip("-").isdigit():
            k = int(text)
            if not 0 <= k < n:
                raise ValueError(f"class {k} is out of range: the model has {n} classes (0..{n - 1})")
            return k
        ids = self._lookup.get(" ".join(text.split()).casefold())
        if not ids:
            raise ValueError(f"{text!r} is not a class name of the model's {n} classes")
        if len(ids) > 1:
            opts = ", ".join(f"{k} ({', '.join(self.names[k][:2])})" for k in ids)
            raise ValueError(f"{text!r} names {len(ids)} classes: {opts}; give the index")
        return ids[0]


@lru_cache(maxsize=1)
def imagenet_classes() -> ClassList:
    """The 1000 ImageNet-1k classes in index order, with their WordNet lemmas."""
    lines = [x for x in _DATA.read_text(encoding="utf-8").splitlines() if x.strip() and not x.startswith("#")]
    if len(lines) != 1000:
        raise RuntimeError(f"{_DATA} holds {len(lines)} classes, not 1000: the package data is damaged")
    return ClassList(tuple(tuple(s.strip() for s in x.split(",")) for x in lines))


def parse_class_prompt(prompt: str, num_classes: int | None = None) -> int | None:
    """The class index a prompt passed by the engine holds (`"207"`), or None if it is not an index (in
    [0, num_classes) when given)."""
    text = str(prompt).strip()
    if not (text.isascii() and text.isdigit()):
        return None
    k = int(text)
    return k if num_classes is None or k < num_classes else None
