"""Reading a job's prompts: a .txt file (one prompt per line) or a .jsonl file with a `prompt` field.

GenEval's `evaluation_metadata.jsonl` is a .jsonl file of this kind; each line's whole object is kept as
the prompt's metadata. A prompt's `index` is its line number in the file, from 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .core.errors import MissingFileError, PromptError

MAX_PROMPT_CHARS = 20_000  # longer than any text encoder reads; a longer line is not a prompt
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls except tab/newline/CR, and DEL


@dataclass
class PromptItem:
    index: int
    prompt: str
    metadata: dict = field(default_factory=dict)


def prompt_problem(prompt: str) -> str | None:
    """Why `prompt` cannot be a prompt for any model (control characters, absurd length), or None."""
    bad = _CONTROL.search(prompt)
    if bad:
        return f"contains the control character {bad.group()!r} (column {bad.start() + 1}); prompts are plain text"
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"is {len(prompt)} characters long, more than {MAX_PROMPT_CHARS}"
    return None


def read_prompts(path: str | Path) -> list[PromptItem]:
    """The prompts of a .txt or .jsonl file. Every bad line is reported at once (`PromptError`, with line
    numbers); checks against the job's text models come later (`ttsvar.jobs.check_prompts`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(f"prompts file not found: {path} (give a .txt or .jsonl file)")
    if not path.is_file():
        raise PromptError(f"prompts={path} is not a file (give a .txt or .jsonl file)")
    if path.suffix not in (".jsonl", ".txt"):
        raise PromptError(f"prompts file {path} must end in .txt (one prompt per line) or .jsonl "
                          "(objects with a 'prompt' field)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PromptError(f"prompts file {path} is not UTF-8 text (line {line}, byte {e.start}: {e.reason}); "
                          "save it as UTF-8 text") from None
    items: list[PromptItem] = []
    errors: list[str] = []
    for i, line in enumerate(text.split("\n")):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{path}:{i + 1}: not valid JSON ({e.msg})")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                errors.append(f"{path}:{i + 1}: each line must be an object with a non-empty string 'prompt' field")
                continue
            item = PromptItem(i, obj["prompt"].strip(), obj)
        else:
            item = PromptItem(i, line.strip())
        why = prompt_problem(item.prompt)
        if why:
            errors.append(f"{path}:{i + 1}: the prompt {why}")
            continue
        items.append(item)
    if errors:
        raise PromptError(format_problems(errors))
    if not items:
        raise PromptError(f"prompts file {path} holds no prompts")
    return items


def format_problems(lines: list[str], limit: int = 20) -> str:
    """One message for all bad lines of a prompt file ("path:line: why" each; the first `limit` spelled out).
    A single problem stays on one line."""
    if len(lines) == 1:
        return f"{lines[0]}; fix or remove that line and re-run"
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return (f"{len(lines)} bad prompt lines; fix or remove them and re-run:"
            + "".join(f"\n  {x}" for x in lines[:limit]) + more)
