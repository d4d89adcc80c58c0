"""The `ttsvar` command line (argparse).

Errors: a `ttsvar.core.errors.TtsvarError` (and the built-in errors bad input raises: ValueError, KeyError,
FileNotFoundError, ...) is printed as one `ttsvar: error: ...` line, exit code 2 for bad input and 1 for
a job that could not finish; `--debug` (anywhere on the command line, or TTSVAR_DEBUG=1) adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from pathlib import Path

from .core.errors import Terminated
from .progress import close_bars

log = logging.getLogger("ttsvar")


def _split_job_args(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_info(_: argparse.Namespace) -> int:
    import platform

    import numpy as np
    import torch

    print(f"ttsvar      {_version()}")
    print(f"python      {platform.python_version()}")
    print(f"torch       {torch.__version__}")
    print(f"numpy       {np.__version__}")
    print(f"cpu threads {torch.get_num_threads()}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"cuda        {n} device(s)" + "".join(f"\n  cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(n)))
    for mod, label in (("faiss", "faiss"), ("ray", "ray"), ("open_clip", "open_clip"), ("timm", "timm")):
        try:
            m = __import__(mod)
            extra = f" (GPUs seen: {m.get_num_gpus()})" if mod == "faiss" else ""
            print(f"{label:<11} {getattr(m, '__version__', '?')}{extra}")
        except Exception as e:  # noqa: BLE001 - report, don't fail
            print(f"{label:<11} not importable: {e}")
    from .models.registry import list_generators

    print(f"models      {', '.join(list_generators())}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ttsvar")
    except PackageNotFoundError:
        return "dev"


def _print_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=1))


def _fresh(ns: argparse.Namespace) -> list[str]:
    return ["output.overwrite=true"] if getattr(ns, "fresh", False) else []


def cmd_run(ns: argparse.Namespace) -> int:
    from .config import load_config
    from .jobs import run_job

    path, overrides = _split_job_args(ns.args)
    job = load_config(path, overrides + _fresh(ns))
    summary = run_job(job)
    out = Path(job.output.dir)
    print(f"images:   {out / 'images'}\nmanifest: {out / 'manifest.jsonl'}"
          + (f"\ntraces:   {out / 'traces'}" if job.output.traces else ""))
    _print_summary(summary)
    return 0 if summary.get("prompts_failed", 0) == 0 else 1


PER_PROMPT_DIR = "outputs/generate/<prompt>"  # generate's default output.dir: a folder per prompt (`_prompt_dir`)
GENERATE_DEFAULTS = {"search": {"strategy": "tts-var", "n": 4}, "output": {"dir": PER_PROMPT_DIR}}
NOT_FOR_GENERATE = ("prompts", "limit")  # job keys generate has no use for: it runs the one prompt of its line


def _prompt_dir(prompt: str) -> Path:
    """`outputs/generate/<slug>`: one folder per prompt, so a second prompt never replaces the first's image; a
    short hash of the text is added where the slug loses something (case, punctuation, length)."""
    import hashlib

    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60].strip("-")
    if slug.replace("-", " ") != " ".join(prompt.split()) or not slug:
        slug = f"{slug}-{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:8]}".lstrip("-")
    return Path("outputs/generate") / slug


def cmd_generate(ns: argparse.Namespace) -> int:
    from dataclasses import replace

    from omegaconf import OmegaConf

    from .config import load_config, read_job_file
    from .core.errors import ConfigError, InputError, OutputError, PromptError
    from .jobs import run_job
    from .output import OutputDir, atomic_write_bytes
    from .prompts import relabel_problems

    if not ns.prompt.strip():
        raise PromptError('the prompt is empty; give the text to generate: ttsvar generate "a photo of a red circle"')
    text = " ".join(ns.prompt.split())  # the line prompts.txt holds (a newline would make two prompts)
    for o in ns.overrides:
        if o.split("=", 1)[0].strip().split(".")[0] in NOT_FOR_GENERATE:
            raise ConfigError(f"{o}: ttsvar generate runs the one prompt on its command line; run a prompts file "
                              "with `ttsvar run prompts=FILE`")
    # precedence: generate's defaults < --config YAML < key=value overrides < the flags given on the line
    base = OmegaConf.create(GENERATE_DEFAULTS)
    if ns.config:
        tree = read_job_file(ns.config)
        ignored = sorted(k for k in NOT_FOR_GENERATE if tree.get(k) is not None)
        if ignored:
            log.warning("%s: %s not used by ttsvar generate, which runs the prompt on its command line", ns.config,
                        " and ".join(ignored))
        base = OmegaConf.merge(base, OmegaConf.create({k: v for k, v in tree.items() if k not in NOT_FOR_GENERATE}))
    base = OmegaConf.to_container(base)
    flags: dict = {}
    for key, value in (("strategy", ns.strategy), ("n", ns.n)):
        if value is not None:
            flags.setdefault("search", {})[key] = value
    if ns.model:
        flags["model"] = {"name": ns.model}
    if ns.out is not None:
        flags["output"] = {"dir": ns.out}
    job = load_config(base, list(ns.overrides) + _fresh(ns), prompts="prompts.txt", **flags)  # fails before a write
    # --out, or output.dir from the YAML or an override, else a folder of this prompt's own: prompts.txt goes there
    out = _prompt_dir(text) if job.output.dir == PER_PROMPT_DIR else Path(job.output.dir)
    job = replace(job, prompts=str(out / "prompts.txt"), output=replace(job.output, dir=str(out)))
    existed = out.exists()
    od = OutputDir(out)
    if not job.output.overwrite:  # resuming this prompt skips it; another prompt's result would be replaced
        others = sorted({str(r.get("prompt")) for i, r in od.done(warn=False).items()
                         if i != 0 or " ".join(str(r.get("prompt")).split()) != text})
        if others:
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            raise OutputError(f"{out} holds the result of another prompt ({others[0][:60]!r}{more}); choose another "
                              "--out, or replace it with --fresh")
    prompts = od.root / "prompts.txt"
    before = prompts.read_bytes() if prompts.is_file() else None
    try:
        atomic_write_bytes(prompts, (text + "\n").encode("utf-8"))
    except OSError as e:
        raise OutputError(f"cannot write {prompts} ({e.strerror or e}); choose another --out") from None
    try:
        summary = run_job(job)
    except InputError as e:  # refused before any result (another configuration's results there, ...): as it was
        _undo_generate(od, prompts, before, existed)
        problems = relabel_problems(str(e), prompts, lambda n: "the prompt") if isinstance(e, PromptError) else []
        if problems:
            raise PromptError("; ".join(problems)) from None
        raise
    rec = od.done(warn=False).get(0)
    if rec is None:
        failed = [r for _, r, _ in od.lines() if r and r.get("index") == 0]
        err = (failed[-1].get("error") or "").strip().splitlines() if failed else []
        print(f"ttsvar: the prompt failed: {err[-1] if err else 'see ' + str(od.manifest)}", file=sys.stderr)
        return 1
    print(f"image: {out / rec['image']}  reward: {rec.get('reward')}")
    return 0 if summary.get("prompts_failed", 0) == 0 else 1


def _undo_generate(od, prompts: Path, before: bytes | None, existed: bool) -> None:
    """After a refused `generate` (`od`: its OutputDir): prompts.txt as it was, and a folder this run made, holding
    no result, gone."""
    from .output import JOB_FILE, LOCK_FILE, atomic_write_bytes

    if before is not None:
        atomic_write_bytes(prompts, before)
        return
    prompts.unlink(missing_ok=True)
    if existed or od.manifest.exists():
        return
    for name in (JOB_FILE, LOCK_FILE):
        (od.root / name).unlink(missing_ok=True)
    for d in (od.root / "images", od.root / "traces", od.root):
        try:
            d.rmdir()  # only when empty: anything else in it stays
        except OSError:
            pass


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(ns.out, seed=ns.seed, per_tag=ns.per_tag, n=ns.n, overrides=ns.overrides)


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from .eval.evaluate import evaluate_output_dir
    from .eval.registry import create_evaluator

    evaluator = create_evaluator(ns.evaluator, field="--evaluator")  # a bad name fails before any file is read
    res = evaluate_output_dir(Path(ns.dir), evaluator)
    print(json.dumps(res["summary"], indent=1))
    print(f"results: {res['results_path']}")
    return 0


def cmd_geneval_generate(ns: argparse.Namespace) -> int:
    from .geneval_jobs import load_geneval_job, run_geneval

    path, overrides = _split_job_args(ns.args)
    job, opts = load_geneval_job(path, overrides + _fresh(ns))
    summary = run_geneval(job, opts)
    out = Path(job.output.dir)
    print(f"samples:  {out}/<prompt:05d>/samples/<n:05d>.png ({summary['samples_written']} of "
          f"{summary['geneval_prompts'] * opts.n_samples})\nmanifest: {out / 'manifest.jsonl'}\n"
          f"score:    ttsvar geneval score {out}")
    _print_summary(summary)
    return 0 if summary.get("prompts_failed", 0) == 0 else 1


def _detector_options(ns: argparse.Namespace) -> dict:
    """The evaluator options of `geneval score`: GenEval's `--options key=value` and the weight files."""
    opts: dict = {}
    for item in ns.options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--options takes key=value pairs (e.g. threshold=0.3), got {item!r}")
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value
    if ns.model_path is not None:
        opts["model_path"] = ns.model_path
    if ns.clip_weights is not None:
        opts["clip_weights"] = ns.clip_weights
    if ns.device is not None:
        opts["device"] = ns.device
    return opts


def cmd_geneval_score(ns: argparse.Namespace) -> int:
    from .eval.evaluate import evaluate_sample_folder
    from .eval.geneval import format_summary
    from .eval.registry import check_evaluator_name, create_evaluator

    check_evaluator_name(ns.detector, "--detector")  # a bad name fails at once; the models load after DIR is checked
    options = _detector_options(ns)
    res = evaluate_sample_folder(Path(ns.dir), lambda: create_evaluator(ns.detector, field="--detector", **options),
                                 ns.out, progress=not ns.quiet)
    print(format_summary(res["summary"]))
    print(f"results: {res['results_path']}")
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from .report import build_report

    info = build_report(ns.dirs, ns.out, embed=ns.embed)
    how = "images embedded" if info.embedded else "images linked by relative path: keep it next to the run folders"
    print(f"report: {info.path}  ({info.size / 2**20:.1f} MiB, {info.prompts} prompt results, {info.images} images, "
          f"{how}; {info.seconds:.1f} s)")
    return 0


def cmd_fit_value(ns: argparse.Namespace) -> int:
    from .value import run_fit_value

    res = run_fit_value(ns.dirs, ns.out, target=ns.target, evaluator=ns.evaluator, hidden=ns.hidden,
                        epochs=ns.epochs, seed=ns.seed, threads=ns.threads)
    m = res["metrics"]
    print(f"within-prompt rank correlation with the {ns.target} on {m['held_out_prompts']} held-out prompts "
          f"(of {m['prompts']}):")
    print(res["table"])
    print(f"value: {res['path']}\nconfig: {res['json']}  ({res['seconds']:.1f} s)")
    return 0


def cmd_config(ns: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .config import load_config, to_yaml
    from .jobs import features_name, preflight, reward_config, search_config

    path, overrides = _split_job_args(ns.args)
    job = load_config(path, overrides)
    print(to_yaml(job))
    # what `auto` and the model's defaults resolve to, as comments: the YAML above still loads as a job file
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in (search_config(job).options or {}).items()}
    print(f"# resolved for model {job.model.name!r} (the model's defaults under yours; job.json records them):")
    print(f"#   search.options: {dict(options) if options else '{}'}")
    print(f"#   reward.name: {reward_config(job).name}   search.features: {features_name(job)}")
    print(f"#   sampling: {asdict(job.sampling.resolve(job.model.name))}")
    # then what `ttsvar run` would refuse before loading a model (an unknown reward or features name, a missing
    # option): after the config, which a user filling in such options wants to see
    preflight(job)
    return 0


def cmd_train_testbed(ns: argparse.Namespace) -> int:
    from .testbed.train import main as train_main

    return train_main(ns.args)


def _interrupt_hint(fn) -> str:
    """What a stopped command left behind: the jobs resume from their manifest; a trainer saves only at its end."""
    if fn in (cmd_run, cmd_generate, cmd_geneval_generate):
        return "finished prompts are in the manifest, re-run the same command to resume"
    if fn is cmd_train_testbed:
        return "the weights are written only when training finishes: nothing was saved"
    return ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttsvar", description="Test-time scaling search for next-scale image generators")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error (anywhere on the line)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="versions, devices, faiss GPUs, Ray")
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("run", help="run a batch job: ttsvar run [JOB.yaml] key=value ...")
    s.add_argument("args", nargs="*", help="optional job YAML, then key=value overrides")
    s.add_argument("--fresh", action="store_true",
                   help="delete the results already in output.dir and start over (output.overwrite=true)")
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("generate", help="search for the best image for one prompt")
    s.add_argument("prompt")
    s.add_argument("--n", type=int, default=None, help="search.n (default 4)")
    s.add_argument("--strategy", default=None, help="search.strategy (default tts-var)")
    s.add_argument("--model", default=None)
    s.add_argument("--out", default=None, help="output.dir (default outputs/generate/<prompt>: a folder per prompt)")
    s.add_argument("--config", default=None, help="optional job YAML")
    s.add_argument("--fresh", action="store_true", help="delete an earlier result in --out and start over")
    s.add_argument("overrides", nargs="*", help="key=value overrides")
    s.set_defaults(fn=cmd_generate)
    s = sub.add_parser("demo", help="plain sampling vs TTS-VAR on the embedded default model, scored exactly, "
                                    "with a grid.png of the images")
    s.add_argument("--out", default="outputs/demo")
    s.add_argument("--seed", type=int, default=0, help="draws the prompts and seeds both runs (the job seed)")
    s.add_argument("--per-tag", type=int, default=4, help="prompts per GenEval tag (6 tags)")
    s.add_argument("--n", type=int, default=2, help="TTS-VAR's N (plain sampling always uses N=1)")
    s.add_argument("overrides", nargs="*", help="key=value overrides of both runs (search.* ones: TTS-VAR's only)")
    s.set_defaults(fn=cmd_demo)
    s = sub.add_parser("evaluate", help="GenEval-style evaluation of a job's output dir with a registered evaluator")
    s.add_argument("dir")
    s.add_argument("--evaluator", default="shapes",
                   help="registered evaluator (default: shapes, the exact evaluator of the shapes testbed)")
    s.set_defaults(fn=cmd_evaluate)
    g = sub.add_parser("geneval", help="GenEval: generate in its layout, score like its evaluator")
    gsub = g.add_subparsers(dest="geneval_command", required=True)
    s = gsub.add_parser("generate", help="n_samples images per GenEval prompt, in GenEval's folder layout: "
                                         "ttsvar geneval generate [JOB.yaml] key=value ... (job keys, n_samples, "
                                         "grid)")
    s.add_argument("args", nargs="*", help="optional job YAML, then key=value overrides (also n_samples=4, "
                                           "grid=true)")
    s.add_argument("--fresh", action="store_true",
                   help="delete the results already in output.dir and start over (output.overwrite=true)")
    s.set_defaults(fn=cmd_geneval_generate)
    s = gsub.add_parser("score", help="score a folder in GenEval's layout: writes DIR/results.jsonl, prints "
                                      "the summary")
    s.add_argument("dir")
    s.add_argument("--detector", default="mask2former",
                   help="mask2former (GenEval's detector and CLIP colour classifier; needs --model-path and "
                        "--clip-weights) or shapes (the shapes testbed's exact evaluator)")
    s.add_argument("--out", default=None, help="results file (default: DIR/results.jsonl)")
    s.add_argument("--model-path", default=None,
                   help="mask2former: GenEval's checkpoint mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth, or "
                        "the folder holding it (GenEval's --model-path)")
    s.add_argument("--clip-weights", default=None,
                   help="mask2former: open_clip ViT-L-14 'openai' weights, a local file")
    s.add_argument("--device", default=None, help="mask2former: cpu, cuda or cuda:N (default: cuda if present)")
    s.add_argument("--options", nargs="*", default=[],
                   help="GenEval's options, key=value: threshold=0.3 counting_threshold=0.9 max_objects=16 "
                        "max_overlap=1.0 position_threshold=0.1 (mask2former), or the evaluator's own (shapes)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_geneval_score)
    s = sub.add_parser("report", help="one self-contained HTML page of job outputs: summary, per-tag scores, "
                                      "every prompt's search tree")
    s.add_argument("dirs", nargs="+", metavar="OUT_DIR", help="job output folders (output.dir); several are compared")
    s.add_argument("-o", "--out", default=None,
                   help="where to write the page (a file, or a folder for report.html); default OUT_DIR/report.html "
                        "of the first folder")
    s.add_argument("--embed", default="auto", choices=("auto", "all", "none"),
                   help="images inside the page (all), linked relative to it (none), or embedded up to 16 MiB (auto)")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("fit-value", help="fit a learned value V_k on runs' search data (output.save_search_data=true); "
                                         "use it with search.options.value=PATH")
    s.add_argument("dirs", nargs="+", metavar="RUN_DIR", help="job output folders with search_data/")
    s.add_argument("-o", "--out", default="value.safetensors", help="the value file (its .json is written beside)")
    s.add_argument("--target", default="reward", choices=("reward", "verdict"),
                   help="predict the final reward, or the evaluator's verdict on the final candidates (needs "
                        "output.save_candidates=true and evaluator metadata)")
    s.add_argument("--evaluator", default="shapes", help="the registered evaluator for --target verdict")
    s.add_argument("--hidden", type=int, default=32, help="hidden units of each scale's MLP")
    s.add_argument("--epochs", type=int, default=400, help="full-batch Adam steps")
    s.add_argument("--seed", type=int, default=0, help="initialisation and held-out prompt split")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.set_defaults(fn=cmd_fit_value)
    s = sub.add_parser("config", help="print the resolved job config")
    s.add_argument("args", nargs="*")
    s.set_defaults(fn=cmd_config)
    s = sub.add_parser("train-testbed", help="train the embedded testbed models from a seed (the options of "
                                             "python -m ttsvar.testbed.train: --out, --seed, --set ...)")
    s.add_argument("args", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_train_testbed)
    return p


_BAD_INPUT = (ValueError, LookupError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ImportError)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


_raise_terminated.ttsvar_terminate = True  # cluster.runtime.connect puts it back after ray.init replaced it


def _terminate_on_sigterm():
    """SIGTERM stops a command as Ctrl-C does (the default would kill it mid-write, and under Ray a native
    handler aborts with a stack dump). Returns what puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    return lambda: signal.signal(signal.SIGTERM, previous)


def describe_error(e: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an error that reached the command line."""
    from .core.errors import TtsvarError

    if isinstance(e, TtsvarError):
        return e.exit_code, str(e)
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = text.strip() or type(e).__name__
    if isinstance(e, _BAD_INPUT):
        return 2, text
    if isinstance(e, OSError):
        return 1, f"{text} ({type(e).__name__})"
    first = text.splitlines()[0]
    return 1, f"unexpected {type(e).__name__}: {first} (run again with --debug for the traceback, and report it)"


class _StderrHandler(logging.Handler):
    """`ttsvar: warning: ...` / `ttsvar: error: ...` lines, written past a running progress bar (tqdm clears
    and redraws it) instead of onto its line."""

    def emit(self, record: logging.LogRecord) -> None:
        text = f"ttsvar: {record.levelname.lower()}: {record.getMessage()}"
        try:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)
        except ImportError:
            print(text, file=sys.stderr)


def _setup_logging() -> None:
    """Warnings of the library (logger `ttsvar`) as `ttsvar: warning: ...` lines, unless the caller set up logging."""
    root, lg = logging.getLogger(), logging.getLogger("ttsvar")
    if root.handlers or lg.handlers:
        return
    lg.addHandler(_StderrHandler())
    lg.setLevel(logging.WARNING)
    _show_config_deprecations()


def _show_config_deprecations() -> None:
    """Python hides DeprecationWarnings outside __main__; a moved config key is one line on stderr."""
    import warnings

    from .config import ConfigDeprecationWarning

    warnings.simplefilter("default", ConfigDeprecationWarning)
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigDeprecationWarning):
            print(f"ttsvar: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    if getattr(original, "__name__", "") != "show":
        warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("TTSVAR_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    if argv[:1] == ["train-testbed"]:  # its trainer's own parser reads the rest (REMAINDER would not take options)
        ns, extra = argparse.Namespace(args=argv[1:], fn=cmd_train_testbed), []
    else:
        ns, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`generate "p" --n 4 search.options.lam=5`): argparse leaves them over
    if extra and hasattr(ns, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        ns.overrides = list(ns.overrides) + extra
    elif extra and isinstance(getattr(ns, "args", None), list) and all("=" in x and not x.startswith("-")
                                                                        for x in extra):
        ns.args = list(ns.args) + extra  # `run a=1 --fresh b=2`: the overrides after the option
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging()
    restore = _terminate_on_sigterm()
    try:
        return ns.fn(ns)
    except KeyboardInterrupt as e:
        close_bars()
        what, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        hint = getattr(e, "hint", None) or _interrupt_hint(ns.fn)
        print(f"ttsvar: {what}{'; ' + hint if hint else ''}", file=sys.stderr)
        return code
    except Exception as e:  # noqa: BLE001 - one line for the user; the traceback with --debug
        close_bars()
        code, msg = describe_error(e)
        if debug:
            traceback.print_exc()
            detail = getattr(e, "detail", None)
            if detail:
                print(detail, file=sys.stderr)
        print(f"ttsvar: error: {msg}", file=sys.stderr)
        return code
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
