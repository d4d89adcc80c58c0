"""The errors ttsvar raises on purpose, under one root class, `TtsvarError`.

    TtsvarError                      exit_code 1: the job could not finish (the message says what to do)
      InputError (also ValueError)   exit_code 2: bad input; fix it and re-run
        ConfigError                  a config field (the message names it)
          ResumeError                output.dir holds results of another configuration
        PromptError                  prompts the job's text models cannot read (all bad lines at once)
        MissingFileError             a file the job needs does not exist (also a FileNotFoundError)
        OutputError                  output.dir cannot be written (checked before any model loads)
        ManifestError                a damaged manifest.jsonl (`ttsvar evaluate`)
      OutputWriteError               a write failed during the job (what was lost, how to redo it)

Errors of other packages that are bad input too are subclasses of `InputError` where that is cheap
(`ttsvar.core.checkpoint.CheckpointError`, `ttsvar.eval.geneval.MetadataError`); `cluster.ClusterError`
derives from `TtsvarError`. The command line prints one line for each of them (a traceback only with
`--debug`) and exits with `exit_code`.

`is_transient(error)` tells the engine whether re-running a failed work unit can help.
"""

from __future__ import annotations


class TtsvarError(Exception):
    """Root of the errors ttsvar raises on purpose; the message says what is wrong and how to fix it."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `timeout`, `kill`) turned into an interrupt by the command line: the job stops as on
    Ctrl-C (finished prompts kept, actors and Ray stopped) and the process exits 143."""


class InputError(TtsvarError, ValueError):
    """Bad input from the user (a config field, a prompt, a file): nothing ran that would be lost."""

    exit_code = 2


class ConfigError(InputError):
    """A config field is unknown, of the wrong type or out of range; the message names the field."""


class ResumeError(ConfigError):
    """`output.dir` holds results of another configuration (the message names the fields that differ)."""


class PromptError(InputError):
    """Prompts the job's text models cannot read; the message lists every bad line."""


class MissingFileError(InputError, FileNotFoundError):
    """A file the job needs (prompts, weights, a job YAML) does not exist; also a FileNotFoundError."""


class OutputError(InputError):
    """`output.dir` (or a folder inside it) cannot be created or written."""


class ManifestError(InputError):
    """A `manifest.jsonl` line that is not a result record (the message names the line)."""


class OutputWriteError(TtsvarError):
    """Writing results failed during a job; the message lists the prompts whose results were lost."""


# Exceptions that re-running the same unit with the same seeds would raise again: bad input, bugs.
_DETERMINISTIC = (ValueError, TypeError, LookupError, AttributeError, NotImplementedError, AssertionError,
                  ArithmeticError, ImportError)


def is_transient(error: BaseException) -> bool:
    """Whether a failed unit may succeed when re-run: resource and environment errors (out of memory, I/O,
    a lost connection, an unclassified RuntimeError) are retried; bad input and programming errors
    (ValueError, TypeError, KeyError, ...) and a reward's non-finite output are not."""
    if isinstance(error, TtsvarError):
        return not isinstance(error, InputError)
    if type(error).__name__ == "RewardOutputError":  # rewards.base: same images, same NaN
        return False
    cause = getattr(error, "cause", None)  # a Ray task error carries the remote exception
    if isinstance(cause, BaseException) and cause is not error:
        return is_transient(cause)
    return not isinstance(error, _DETERMINISTIC)


def one_line(e: BaseException) -> str:
    """An error's message as one line for a log or a summary: its last non-empty line (the exception's own, after
    any context), or its type's name."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return lines[-1] if lines else type(e).__name__
