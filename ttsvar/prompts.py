"""Reading a job's prompts: a .txt file (one prompt per line) or a .jsonl file with a `prompt` field (text
models) or a `class` field (class models: `{"class": 3}` or `{"class": "goldfish"}`).

GenEval's `evaluation_metadata.jsonl` is a .jsonl file of this kind; each line's whole object is kept as
the prompt's metadata. A prompt's `index` is its line number in the file, from 0.

For a class-conditional model (`ttsvar.core.classes`) every prompt names a class: a `class` field, or a .txt
line / `prompt` field holding a class index or name. `resolve_prompts` turns each into the class index written
as text (`"1"`), what the generator and class rewards read, and records the class and its name on the item;
a text prompt for a class model, or a `class` field for a text model, is a `PromptError` naming the line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core.classes import ClassList
from .core.errors import ConfigError, MissingFileError, PromptError, one_line

MAX_PROMPT_CHARS = 20_000  # longer than any text encoder reads; a longer line is not a prompt
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls except tab/newline/CR, and DEL

log = logging.getLogger("ttsvar")


@dataclass
class PromptItem:
    index: int
    prompt: str
    metadata: dict = field(default_factory=dict)
    class_spec: int | str | None = None  # a .jsonl line's `class` field, as written
    class_index: int | None = None  # set by `resolve_prompts` for a class model (then prompt == str(class_index))
    class_name: str | None = None


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
    numbers); checks against the job's text models come later (`ttsvar.prompts.check_prompts`)."""
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
            if isinstance(obj, dict) and "class" in obj:
                spec = obj["class"]
                if isinstance(spec, bool) or not isinstance(spec, (int, str)) or not str(spec).strip():
                    errors.append(f"{path}:{i + 1}: 'class' must be a class index (an integer) or a class name, "
                                  f"got {spec!r}")
                    continue
                item = PromptItem(i, str(spec).strip(), obj, class_spec=spec)
            elif not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                errors.append(f"{path}:{i + 1}: each line must be an object with a non-empty string 'prompt' field "
                              "(or, for a class-conditional model, a 'class' field)")
                continue
            else:
                item = PromptItem(i, obj["prompt"].strip(), obj)
        else:
            item = PromptItem(i, line.strip())
        why = prompt_problem(item.prompt)
        if why:
            errors.append(f"{path}:{i + 1}: the prompt {why}")
            continue
        items.append(item)
    if errors:
        raise problems_error(errors, items)
    if not items:
        raise PromptError(f"prompts file {path} holds no prompts")
    return items


def problems_error(lines: list[str], items: list[PromptItem] | None = None) -> PromptError:
    """The `PromptError` for bad lines; it carries them (`problems`) and the good items read (`items`), so that a
    later check can add its own bad lines and report all of them at once (`ttsvar.jobs.job_items`)."""
    e = PromptError(format_problems(lines))
    e.problems, e.items = list(lines), list(items or [])
    return e


def resolve_prompts(items: list[PromptItem], path: str | Path, model: str,
                    classes: ClassList | None) -> list[PromptItem]:
    """Check the prompts against the model's conditioning (`classes` None: a text model) and, for a class model,
    turn each into its class index (see the module docstring). All bad lines at once (`PromptError`)."""
    errors: list[str] = []
    if classes is None:
        for it in items:
            if it.class_spec is not None:
                errors.append(f"{path}:{it.index + 1}: {{\"class\": {it.class_spec!r}}} is a class but {model} is "
                              "text-conditional; give a 'prompt' field with text")
        if errors:
            raise problems_error(errors)
        return items
    n = len(classes)
    for it in items:
        spec = it.class_spec if it.class_spec is not None else it.prompt
        try:
            k = classes.resolve(spec)
        except ValueError as e:
            text = str(spec).strip()
            if it.class_spec is not None or text.isdigit() or text.lstrip("-").isdigit():
                errors.append(f"{path}:{it.index + 1}: {e} ({model} has {n} classes)")
            elif "names" in str(e):  # ambiguous name
                errors.append(f"{path}:{it.index + 1}: {e}")
            else:
                errors.append(f"{path}:{it.index + 1}: {text!r} is text but {model} is class-conditional; give "
                              f"{{\"class\": <index in 0..{n - 1}>}} or a class name (e.g. {classes.name(n - 1)!r})")
            continue
        it.prompt, it.class_index, it.class_name = str(k), k, classes.name(k)
    if errors:
        raise problems_error(errors)
    return items


_ONE_LINE_TAIL = "; fix or remove that line and re-run"


def format_problems(lines: list[str], limit: int = 20) -> str:
    """One message for all bad lines of a prompt file ("path:line: why" each; the first `limit` spelled out).
    A single problem stays on one line."""
    if len(lines) == 1:
        return f"{lines[0]}{_ONE_LINE_TAIL}"
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return (f"{len(lines)} bad prompt lines; fix or remove them and re-run:"
            + "".join(f"\n  {x}" for x in lines[:limit]) + more)


def relabel_problems(message: str, path: str | Path, where: Callable[[int], str]) -> list[str]:
    """The "label: why" problems of a `format_problems` message about the prompts file `path`, each line number
    n of it named `where(n)` instead, in order and without repeats: for a command that wrote `path` itself from
    the user's input (`ttsvar generate`'s prompt, `geneval generate`'s expanded metadata), whose line numbers
    would name a file the user never made. Only the problems of `path` are returned."""
    head = re.escape(str(path))
    out: list[str] = []
    for line in message.splitlines():
        m = re.match(rf"\s*{head}:(\d+): (.*)$", line)
        if m is None:
            continue
        why = m.group(2).removesuffix(_ONE_LINE_TAIL)
        item = f"{where(int(m.group(1)))}: {why}"
        if item not in out:
            out.append(item)
    return out


def line_number(problem: str) -> int:
    """The line number of a "path:line: why" problem (for ordering them)."""
    m = re.match(r".*?:(\d+): ", problem)
    return int(m.group(1)) if m else 0


def prompt_problems(comp, prompts: list[str], score_batch: int = 64,
                    reward_label: str | None = None) -> dict[str, str]:
    """prompt -> why the job's text models cannot read it, for every prompt that fails: the generator's text
    encoder (`check_prompt`) and the reward (scoring a grey image with the prompt, bisecting failed batches;
    only ValueError-like errors count, a reward that fails otherwise is reported by the job itself).
    Feature extractors read no text."""
    import torch

    from rewards.base import RewardShapeError

    from .engine import score_images

    bad: dict[str, str] = {}
    uniq = list(dict.fromkeys(prompts))
    for p in uniq:
        try:
            comp.generator.check_prompt(p)
        except ValueError as e:
            bad[p] = f"the generator's text encoder: {e}"
    size = getattr(comp.reward, "input_size", None) or comp.preview_size or 32
    size = size if isinstance(size, int) and 8 <= size <= 1024 else 32
    label = reward_label or getattr(comp.reward, "name", None) or type(comp.reward).__name__

    class _Inconclusive(Exception):
        pass

    def probe(ps: list[str]) -> None:
        img = torch.full((len(ps), 3, size, size), 0.5)
        try:
            score_images(comp.reward, img, ps, np.arange(len(ps)))
        except RewardShapeError as e:  # not one number per image, whatever the image: the reward is broken
            raise ConfigError(f"reward.name: {label} does not return one score per image ({one_line(e)}); fix the "
                              "reward before running the job") from None
        except (ValueError, KeyError, IndexError, TypeError) as e:
            if len(ps) == 1:
                why = f"reward {label}: {one_line(e)}"
                bad[ps[0]] = f"{bad[ps[0]]}; {why}" if ps[0] in bad else why
                return
            mid = len(ps) // 2
            probe(ps[:mid])
            probe(ps[mid:])
        except Exception as e:  # noqa: BLE001 - not about the prompt: the job reports it if it recurs
            raise _Inconclusive(e) from None

    try:
        for s in range(0, len(uniq), max(1, score_batch)):
            probe(uniq[s:s + score_batch])
    except _Inconclusive as e:
        log.warning("could not check the prompts with reward %s (%s); checking them as the job runs", label,
                    one_line(e.args[0] if e.args else e))
    return bad


def check_prompts(path: str | Path, items: list[PromptItem], problems: dict[str, str]) -> None:
    """Raise `PromptError` listing every line of the prompts file `path` whose prompt is in `problems` (from
    `prompt_problems`); a `ConfigError` when every prompt fails the same way (the reward or model is broken)."""
    lines = [f"{path}:{it.index + 1}: {problems[it.prompt]}" for it in items if it.prompt in problems]
    reasons = {problems.get(it.prompt) for it in items}
    if len({it.prompt for it in items}) > 1 and len(reasons) == 1 and None not in reasons:
        raise ConfigError(f"every prompt of the job fails the same way ({reasons.pop()}): the reward or the model "
                          "is what fails (its options, weights or code), not the prompts")
    if lines:
        raise PromptError(format_problems(lines))
