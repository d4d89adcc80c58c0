"""Batch-invariant forwards: a row's result does not depend on which other rows share its batch.

Float32 kernels on the CPU (MKL, oneDNN) pick their code path by problem shape, and some paths round
differently, so the same row can come out different in the last bits when other rows join its batch; one
flipped bit at a sampled scale changes the whole rest of that path. Measured on the CPU this was written on
(PyTorch 2.14, MKL 2024.2, oneDNN 3.12, 1 to 8 threads; `tests/test_invariant.py` checks it again wherever
the tests run):

* `linear` / `matmul`: a row's output is the same for every row count M >= 12 (1-3 rows take another path;
  with 2 or 8 threads 5-7 and 9-11 rows do too). Its position within the batch never matters.
* `conv2d`: 3x3 kernels take another path for a batch of 1 image; every batch of 2 or more gives an image the
  same bits (1 and 2 threads, 2x2 to 32x32 inputs, 8 to 96 channels, strides 1 and 2). 1x1 kernels (the VAE's
  shortcuts) change path at 16 images with 1 thread and at 2 with 2 threads: batches of 2 to 15 agree with both.
  Within calls of one shape the position never matters.
* `scaled_dot_product_attention`: invariant to the batch, but a key-padding mask is not the same as fewer
  keys: padding a prompt's text to a longer prompt's length (what packing prompts does) changes its
  cross-attention in the last bits.
* layer norm, group norm, softmax and the elementwise ops: invariant (per row).

`BatchInvariant` is a `TorchFunctionMode` that routes those three op families through shape-independent
calls: linears and matmuls get at least `MIN_ROWS` rows (zero rows appended and dropped), convolutions run
in calls of `CONV_MIN_BATCH` or more images (a lone image gets a zero partner; 1x1 kernels in calls of at most
`CONV_1X1_MAX_BATCH`), and attention under a per-row prefix mask ([B,1,1,T] bool, True on
the first len_b keys) runs per group of rows of equal length on exactly those keys, unmasked. Text encoders
run one prompt per call in this mode (`InfinityGenerator.start`), since their own batching pads. What the
mode costs is in docs/benchmarks.md (`bench/bench_invariant.py`).

Generators enter it around `start`, `step` and `preview` when their `batch_invariant` flag is set (the job
sets it from `runtime.batch_invariant`). It is a CPU mode: CUDA kernels choose split reductions by shape in
ways padding does not fix, so `runtime.batch_invariant=true` is refused on a GPU
(`ttsvar.jobs.resolve_batch_invariant`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MIN_ROWS = 16  # rows from which every linear/matmul row count measured agrees (12, with margin)
CONV_BATCH = 4  # the reference call size: every conv route gives the bits of calls of exactly 4 images
CONV_MIN_BATCH = 2  # the smallest conv2d call whose bits agree with CONV_BATCH (a batch of 1 runs another path)
CONV_1X1_MAX_BATCH = 8  # 1x1 kernels switch path at 16 images with 1 thread: calls stay well below


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [M, K] with M < rows -> [rows, K], zero rows appended."""
    return torch.cat((x, x.new_zeros(rows - x.shape[0], x.shape[1])))


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()  # [M,K]; the kernel also depends on the input's strides
    M = x2.shape[0]
    if M < MIN_ROWS:
        x2 = _pad_rows(x2, MIN_ROWS)
    out = F.linear(x2, weight.contiguous(), bias)[:M]  # [M,N]
    return out.reshape(*lead, out.shape[-1])


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dim() < 2 or b.dim() != 2:  # batched matmuls are not on the sampling paths; left as they are
        return torch.matmul(a, b)
    return _linear(a, b.t())


def _conv2d(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    # oneDNN picks its algorithm by batch size and memory format (a channels-last slice runs another kernel), so
    # every call gets a contiguous input of a batch size whose bits are those of CONV_BATCH (module doc). Earlier
    # this ran every batch in chunks of exactly 4 images: the same bits, but a single image paid for 4 and a
    # small-grid decode paid a call (and a weight reorder) per 4 images
    if x.dim() != 4:
        return F.conv2d(x, *args, **kwargs)
    weight = args[0] if args else kwargs["weight"]
    B = x.shape[0]
    x = x.contiguous()
    step = CONV_1X1_MAX_BATCH if tuple(weight.shape[-2:]) == (1, 1) else max(B, CONV_MIN_BATCH)
    outs = []
    for c in x.split(step):
        n = c.shape[0]
        if n < CONV_MIN_BATCH:
            c = torch.cat((c, c.new_zeros(CONV_MIN_BATCH - n, *c.shape[1:])))
        outs.append(F.conv2d(c, *args, **kwargs)[:n])
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def reference_conv2d(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """conv2d in calls of exactly CONV_BATCH images (the last one zero-padded): what `_conv2d` must equal bit for
    bit (tests)."""
    B = x.shape[0]
    x = x.contiguous()
    if B % CONV_BATCH:
        x = torch.cat((x, x.new_zeros(CONV_BATCH - B % CONV_BATCH, *x.shape[1:])))
    return torch.cat([F.conv2d(c, *args, **kwargs) for c in x.split(CONV_BATCH)])[:B]


def _prefix_lengths(mask: torch.Tensor, batch: int) -> torch.Tensor | None:
    """Per-row key counts of a key-padding mask [B,1,1,T] that is True exactly on each row's first keys."""
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[0] != batch or mask.shape[1:3] != (1, 1):
        return None
    m = mask[:, 0, 0, :]  # [B,T]
    lens = m.sum(1)
    prefix = torch.arange(m.shape[1], device=m.device)[None, :] < lens[:, None]
    return lens if torch.equal(prefix, m) else None


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    lens = None if attn_mask is None else _prefix_lengths(attn_mask, q.shape[0])
    if lens is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, **kwargs)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])  # [B,H,L,hd]
    for t in lens.unique().tolist():
        idx = (lens == t).nonzero().squeeze(1)
        out[idx] = F.scaled_dot_product_attention(q[idx], k[idx, :, :t], v[idx, :, :t], dropout_p=dropout_p,
                                                  is_causal=is_causal, scale=scale, **kwargs)
    return out


_ROUTES = {
    F.linear: _linear,
    torch.matmul: _matmul,
    torch.Tensor.matmul: _matmul,  # what `a @ b` reaches the mode as
    torch.Tensor.__matmul__: _matmul,
    F.conv2d: _conv2d,
    F.scaled_dot_product_attention: _sdpa,
}


class BatchInvariant(TorchFunctionMode):
    """Routes linear, matmul, conv2d and masked attention through batch-shape-independent calls (module doc)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = _ROUTES.get(func)
        # inside this method the mode is off, so the routes' own torch calls run the plain kernels
        return route(*args, **kwargs) if route is not None else func(*args, **kwargs)


@contextlib.contextmanager
def batch_invariant(enabled: bool = True) -> Iterator[None]:
    """`with batch_invariant(flag):` runs the block in `BatchInvariant` when `flag` is true, else as is."""
    if not enabled:
        yield
        return
    with BatchInvariant():
        yield
