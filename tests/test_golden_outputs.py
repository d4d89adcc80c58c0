"""Behaviour is pinned across refactors: two fixed jobs must write the very images they wrote when the hashes
were recorded (before the architecture consolidation of issue 11).

Each job is small and fully seeded; the hash is SHA-256 of every finished prompt's best image, decoded to RGB
pixels, in prompt order. A change here means the engine, a strategy, a model or a reward now decides or draws
differently: if that is intended, re-record with ``TTSVAR_RECORD_GOLDEN=1 pytest tests/test_golden_outputs.py -s``
and say why in the commit.

The bits depend on the CPU's convolution kernels: the hashes were recorded with oneDNN's AVX2 kernels, and an
AVX-512 machine draws other images in the batch-invariant job. Each job therefore runs in a child process with
`ONEDNN_MAX_CPU_ISA=AVX2` (read when oneDNN starts, so not settable inside the test process), which gives the
recorded bits on any x86-64 CPU with AVX2; other CPUs skip."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ttsvar.config import load_config
from ttsvar.jobs import run_job

PROMPTS = ("a photo of a red circle", "a photo of two blue squares", "a photo of a triangle left of a square")

INFINITY_TTS_VAR = ["model.name=infinity-tiny-random", "search.strategy=tts-var", "search.n=4",
                    "search.features=test-pixels", "reward.name=helpers_components:ScaledRedness"]
JOBS = {
    # the Infinity code path (random weights), a plugged-in reward by import path, TTS-VAR with clustering; recorded
    # before the batch-invariant mode existed, so pinned with it off
    "infinity-tts-var": [*INFINITY_TTS_VAR, "runtime.batch_invariant=false"],
    # the same job in the batch-invariant mode, the CPU default since issue 16 (other rounding, other draws)
    "infinity-tts-var-invariant": INFINITY_TTS_VAR,
    # the embedded testbed generator with its CLIP-like reward and features, Best-of-N (mode off, as recorded)
    "shapes-best-of-n": ["model.name=shapes-tiny", "search.strategy=best-of-n", "search.n=4",
                         "reward.name=shapes-clip", "runtime.batch_invariant=false"],
}

GOLDEN = {
    "infinity-tts-var": "3e0fa1baeff800b4486b34468ae62efe2ed4f391bc47db59843ba7cc238c5373",
    "infinity-tts-var-invariant": "28a89823e5730f8c7225c909ea70fbb85d89112de2c8701e235ba807976d2c8d",
    "shapes-best-of-n": "ed48dfb95725d12416d20db7dee872967b748a408f4ae07b5992d66242cdeafe",
}


def _run(tmp_path, name: str) -> str:
    prompts = tmp_path / f"{name}.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / name
    job = load_config(None, [f"prompts={prompts}", f"output.dir={out}", "seed=1234", "runtime.quiet=true",
                             *JOBS[name]])
    run_job(job)
    records = sorted((json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line),
                     key=lambda r: r["index"])
    assert len(records) == len(PROMPTS)
    h = hashlib.sha256()
    for rec in records:
        with Image.open(out / rec["image"]) as im:
            h.update(np.asarray(im.convert("RGB")).tobytes())
    return h.hexdigest()


def _run_pinned(tmp_path, name: str) -> str:
    """`_run` in a child process on oneDNN's AVX2 kernels (the module docstring)."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2",
           "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), name, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


avx2 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64")
                          or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                          reason="the hashes were recorded with oneDNN's x86 AVX2 kernels")


@avx2
@pytest.mark.parametrize("name", sorted(JOBS))
def test_fixed_job_writes_the_recorded_images(tmp_path, name):
    digest = _run_pinned(tmp_path, name)
    if os.environ.get("TTSVAR_RECORD_GOLDEN"):
        print(f"\n    {name!r}: {digest!r},")
        return
    assert digest == GOLDEN[name], f"{name}: the job's images changed (see the module docstring)"


if __name__ == "__main__":  # the child process of `_run_pinned`: python test_golden_outputs.py NAME TMP_DIR
    torch.set_num_threads(1)  # as conftest.py sets it for the suite
    print(_run(Path(sys.argv[2]), sys.argv[1]))
