"""Reading a job's prompts: a .txt file (one prompt per line) or a .jsonl file with a `prompt` field.

GenEval's `evaluation_metadata.jsonl` is a .jsonl file of this kind; each line's whole object is kept as
the prompt's metadata. A prompt's `index` is its line number in the file, from 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PromptItem:
    index: int
    prompt: str
    metadata: dict = field(default_factory=dict)


def read_prompts(path: str | Path) -> list[PromptItem]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path} (give a .txt or .jsonl file)")
    items: list[PromptItem] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from e
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise ValueError(f"{path}:{i + 1}: each line must be an object with a non-empty string "
                                 "'prompt' field")
            items.append(PromptItem(i, obj["prompt"].strip(), obj))
    elif path.suffix == ".txt":
        items = [PromptItem(i, line.strip()) for i, line in enumerate(lines) if line.strip()]
    else:
        raise ValueError(f"prompts file {path} must end in .txt (one prompt per line) or .jsonl "
                         "(objects with a 'prompt' field)")
    if not items:
        raise ValueError(f"prompts file {path} holds no prompts")
    return items
