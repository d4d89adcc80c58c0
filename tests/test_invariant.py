"""The batch-invariant mode (`ttsvar.models.invariant`, `runtime.batch_invariant`): the kernels it routes give a row
the same bits whatever shares its call, and the generators give a prompt's rows the same caches, latents and
previews alone as packed with other prompts. The whole-job check (one prompt per unit against four, byte-identical
files) is `tests/test_engine.py::test_results_do_not_depend_on_packing`."""

import pytest
import torch
import torch.nn.functional as F

from ttsvar.config import ConfigError, load_config
from ttsvar.core.generator import Rows, SamplingConfig
from ttsvar.jobs import resolve_batch_invariant
from ttsvar.models.invariant import CONV_1X1_MAX_BATCH, CONV_BATCH, batch_invariant, reference_conv2d
from ttsvar.models.var.builders import tiny_random as var_tiny
from ttsvar.testbed.model import load_shapes_tiny


@pytest.fixture(scope="module")
def shapes_gen():
    return load_shapes_tiny()


# the kernels' shape thresholds differ with the thread count (see the module doc); the generator tests run with the
# process's threads, the op tests with 1 and 2
@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def test_linear_rows_do_not_depend_on_the_row_count(threads):
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(96, 64, generator=g), torch.randn(96, generator=g), torch.randn(300, 64, generator=g)
    with batch_invariant():
        ref = F.linear(x, w, b)
        for m in range(1, 40):
            assert torch.equal(F.linear(x[:m], w, b), ref[:m]), m
            assert torch.equal(x[:m] @ w.t(), F.linear(x, w)[:m]), m  # matmul, as `a @ b` writes it
        # a channels-last-like view (non-contiguous) gives the same bits as the contiguous rows
        assert torch.equal(F.linear(x.t().contiguous().t()[:5], w, b), ref[:5])


def test_conv_images_do_not_depend_on_the_batch(threads):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, 48, 8, 8, generator=g)
    for k in (1, 3):  # 1x1 kernels are the ones whose path changes with the batch up to 15 images
        w = torch.randn(32, 48, k, k, generator=g)
        with batch_invariant():
            ref = F.conv2d(x, w, padding=k // 2)
            for n in range(1, 11):
                assert torch.equal(F.conv2d(x[:n], w, padding=k // 2), ref[:n]), (k, n)
            last = x.to(memory_format=torch.channels_last)[:3]
            assert torch.equal(F.conv2d(last, w, padding=k // 2), ref[:3])
    assert CONV_BATCH >= 2


@pytest.mark.parametrize("k,stride,channels,size", [(3, 1, (8, 96), 2), (3, 1, (96, 96), 3), (3, 1, (96, 48), 8),
                                                     (3, 1, (48, 3), 32), (3, 2, (48, 48), 9), (1, 1, (96, 48), 6)])
def test_conv_route_gives_the_bits_of_calls_of_four_images(threads, k, stride, channels, size):
    """The route runs a batch in one call (a lone image padded to two; 1x1 kernels in calls of up to
    CONV_1X1_MAX_BATCH) and must equal calls of exactly CONV_BATCH images, which the golden outputs were made with."""
    g = torch.Generator().manual_seed(k * 100 + size)
    c_in, c_out = channels
    x = torch.randn(64, c_in, size, size, generator=g)
    w, b = torch.randn(c_out, c_in, k, k, generator=g), torch.randn(c_out, generator=g)
    ref = reference_conv2d(x, w, b, stride=stride, padding=k // 2)
    with batch_invariant():
        for n in [*range(1, 2 * CONV_1X1_MAX_BATCH + 2), 33, 64]:
            assert torch.equal(F.conv2d(x[:n], w, b, stride=stride, padding=k // 2), ref[:n]), n


def test_masked_attention_equals_attention_over_each_rows_own_keys(threads):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 4, 9, 16, generator=g) for _ in range(3))
    lens = torch.tensor([9, 3, 9, 5, 7])
    mask = (torch.arange(9)[None, :] < lens[:, None])[:, None, None, :]  # [5,1,1,9] prefix masks
    with batch_invariant():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        for i, t in enumerate(lens.tolist()):  # a row alone, its text unpadded: what it gets in a unit of its own
            alone = F.scaled_dot_product_attention(q[i:i + 1], k[i:i + 1, :, :t], v[i:i + 1, :, :t])
            assert torch.equal(out[i:i + 1], alone), i
        # a mask that is not a per-row prefix is passed through unchanged
        odd = mask.clone()
        odd[0, ..., 0] = False
        assert torch.equal(F.scaled_dot_product_attention(q, k, v, attn_mask=odd),
                           F.scaled_dot_product_attention(q, k, v, attn_mask=odd))


def _kv_equal(alone: list, packed: list, start: int, n: int, total: int) -> bool:
    """The cond and uncond KV rows of `n` candidates alone equal rows start.. (and their uncond partners) packed
    in a state of `total` candidate rows."""
    rows = torch.cat((torch.arange(start, start + n), torch.arange(start, start + n) + total))
    return all(torch.equal(x, y[rows]) for x, y in zip(alone, packed))


def _infinity_runs(gen, prompts: dict[int, str], n: int):
    """Per scale: (summed codes, every block's (k, v) rows, previews) of `n` candidates of each prompt."""
    state = gen.start(prompts, Rows.for_prompts(n, [100 + i for i in prompts], list(prompts)))
    out = []
    while state.scale < gen.num_scales:
        state = gen.step(state)
        out.append((state.summed_codes.clone(), [t.clone() for t in gen.kv_rows(state)], gen.preview(state, size=16)))
    return out


@pytest.mark.parametrize("n", [1, 3])
def test_infinity_prompt_alone_equals_packed(shapes_gen, n):
    """shapes-tiny: prompts of different lengths (so packing pads their text), each alone and all five packed."""
    prompts = {0: "a photo of a red circle", 1: "a photo of two squares", 2: "a blue triangle",
               3: "a photo of a circle left of a square", 4: "a photo of a green square and a red circle"}
    shapes_gen.batch_invariant = True
    try:
        packed = _infinity_runs(shapes_gen, prompts, n)
        for p in (1, 2):
            alone = _infinity_runs(shapes_gen, {p: prompts[p]}, n)
            rows = slice(n * p, n * p + n)
            for k, (a, b) in enumerate(zip(alone, packed)):
                assert torch.equal(a[0], b[0][rows]), (p, k)
                assert _kv_equal(a[1], b[1], n * p, n, n * len(prompts)), (p, k)
                assert torch.equal(a[2], b[2][rows]), (p, k)
    finally:
        shapes_gen.batch_invariant = False


def test_var_prompt_alone_equals_packed():
    gen = var_tiny(seed=0, sampling=SamplingConfig(cfg=4.0, tau=1.0, top_k=0, top_p=0.0))
    gen.batch_invariant = True
    prompts = {0: "3", 1: "7", 2: "0"}

    def runs(ps, n):
        state = gen.start({i: prompts[i] for i in ps}, Rows.for_prompts(n, [5 + i for i in ps], ps))
        out = []
        while state.scale < gen.num_scales:
            state = gen.step(state)
            out.append((state.f_hat.clone(), [t.clone() for t in gen.kv_rows(state)], gen.preview(state)))
        return out

    packed = runs([0, 1, 2], 2)
    alone = runs([1], 2)
    for k, (a, b) in enumerate(zip(alone, packed)):
        assert torch.equal(a[0], b[0][2:4]), k
        assert _kv_equal(a[1], b[1], 2, 2, 6), k
        assert torch.equal(a[2], b[2][2:4]), k


def test_the_job_field_is_checked_and_resolved(tmp_path):
    with pytest.raises(ConfigError, match="runtime.batch_invariant"):
        load_config(None, [f"output.dir={tmp_path}", "runtime.batch_invariant=sometimes"])
    assert load_config(None, [f"output.dir={tmp_path}"]).runtime.batch_invariant == "auto"
    assert resolve_batch_invariant("auto", torch.device("cpu")) is True
    assert resolve_batch_invariant("auto", torch.device("cuda")) is False
    assert resolve_batch_invariant(False, torch.device("cpu")) is False
    with pytest.raises(ConfigError, match="runtime.batch_invariant=true is a CPU mode"):
        resolve_batch_invariant(True, torch.device("cuda"))
    assert resolve_batch_invariant(True, "cpu") is True
