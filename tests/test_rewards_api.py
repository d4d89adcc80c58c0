"""The reward interface without models: input/output checks, NaN policy, registry and plug-in paths,
config building, ensembles and their normalisation."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import textwrap

import numpy as np
import pytest
import torch

import rewards
from rewards import (
    FunctionReward,
    Reward,
    RewardConfig,
    RewardInputError,
    RewardOutputError,
    build_reward,
    create_reward,
    list_rewards,
    register_reward,
)
from rewards.ensemble import EnsembleReward, zscore
from rewards.registry import _REGISTRY


def mean_brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def prompt_length(images, prompts):
    return torch.tensor([float(len(p)) for p in prompts])


def _img(values):
    """One flat-colour 4x4 image per value."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()


@pytest.fixture
def registry_snapshot():
    saved = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(saved)


# ----------------------------------------------------------------------------- input / output checks


def test_plain_function_is_enough():
    r = create_reward(mean_brightness, needs_prompt=False)
    assert isinstance(r, FunctionReward) and r.name == "mean_brightness"
    s = r.score(_img([0.2, 0.8, 0.5]))
    assert s.dtype == torch.float32 and s.device.type == "cpu"
    torch.testing.assert_close(s, torch.tensor([0.2, 0.8, 0.5]))


@pytest.mark.parametrize(
    "images, prompts, match",
    [
        (np.zeros((1, 3, 4, 4)), ["a"], "must be a torch.Tensor"),
        (torch.zeros(3, 4, 4), ["a"], r"shape \[B,3,H,W\]"),
        (torch.zeros(1, 4, 4, 3), ["a"], r"shape \[B,3,H,W\]"),
        (torch.zeros(0, 3, 4, 4), [], "empty batch"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ["a"], "images.float\\(\\) / 255"),
        (torch.full((1, 3, 4, 4), -0.5), ["a"], "values must lie in \\[0,1\\]"),
        (torch.full((1, 3, 4, 4), 1.01), ["a"], "values must lie in \\[0,1\\]"),
        (torch.full((1, 3, 4, 4), float("nan")), ["a"], "NaN"),
        (torch.zeros(2, 3, 4, 4), ["a"], "got 1 prompts for 2 images"),
        (torch.zeros(2, 3, 4, 4), "a cat", "single string"),
        (torch.zeros(2, 3, 4, 4), None, "needs one prompt per image"),
        (torch.zeros(2, 3, 4, 4), ["a", 3], "must be strings"),
    ],
)
def test_bad_inputs_are_refused(images, prompts, match):
    r = create_reward(prompt_length)
    with pytest.raises(RewardInputError, match=match):
        r.score(images, prompts)


def test_bad_groups_are_refused():
    r = create_reward(prompt_length)
    with pytest.raises(RewardInputError, match="groups must be a 1-D sequence of 2"):
        r.score(_img([0.1, 0.2]), ["a", "b"], groups=[0, 1, 2])
    with pytest.raises(RewardInputError, match="integer ids"):
        r.score(_img([0.1, 0.2]), ["a", "b"], groups=[0.5, 1.0])


@pytest.mark.parametrize(
    "returned, match",
    [
        (lambda x, p: torch.zeros(len(p) + 1), r"shape \(3,\) for 2 images"),
        (lambda x, p: torch.zeros(len(p), 2), r"shape \(2, 2\)"),
        (lambda x, p: 1.0, "must return a Tensor"),
        (lambda x, p: ["a", "b"], "not numeric"),
        (lambda x, p: torch.zeros(len(p), dtype=torch.bool), "dtype torch.bool"),
    ],
)
def test_broken_reward_outputs_are_refused(returned, match):
    r = create_reward(returned, name="broken")
    with pytest.raises(RewardOutputError, match=match):
        r.score(_img([0.1, 0.2]), ["a", "b"])


def test_accepted_output_forms():
    for fn in (
        lambda x, p: [1.0, 2.0],
        lambda x, p: np.array([1.0, 2.0]),
        lambda x, p: torch.tensor([[1], [2]]),
    ):
        s = create_reward(fn).score(_img([0.1, 0.2]), ["a", "b"])
        assert s.dtype == torch.float32 and s.tolist() == [1.0, 2.0]


def nan_at_one(images, prompts):
    return torch.tensor([0.5, float("nan"), float("inf")])


def test_nan_policy():
    x, p = _img([0.1, 0.2, 0.3]), ["a", "b", "c"]
    with pytest.raises(RewardOutputError, match=r"non-finite scores at positions \[1, 2\]"):
        create_reward(nan_at_one).score(x, p)
    passed = create_reward(nan_at_one, nan_policy="pass").score(x, p)
    assert passed[0] == 0.5 and passed[1].isnan() and passed[2].isinf()
    replaced = create_reward(nan_at_one, nan_policy=float("-inf")).score(x, p)
    assert replaced.tolist() == [0.5, float("-inf"), float("-inf")]
    # the documented use: exp(lambda * score) gives such a candidate weight 0
    assert torch.exp(10 * replaced).tolist()[1:] == [0.0, 0.0]
    assert create_reward(nan_at_one, nan_policy=-5).score(x, p).tolist() == [0.5, -5.0, -5.0]
    for bad in ("ignore", float("nan"), True):
        with pytest.raises(ValueError, match="nan_policy"):
            create_reward(nan_at_one, nan_policy=bad)


def test_common_options_on_a_built_reward_leave_the_callers_instance_alone():
    x, p = _img([0.1, 0.2, 0.3]), ["a", "b", "c"]
    shared = create_reward(nan_at_one)
    lenient = create_reward(shared, nan_policy=-5, batch_size=3)
    assert lenient.score(x, p).tolist() == [0.5, -5.0, -5.0] and lenient.batch_size == 3
    assert shared.batch_size is None
    with pytest.raises(RewardOutputError, match="non-finite"):  # still the strict default
        shared.score(x, p)
    assert create_reward(shared) is shared  # nothing to set: the instance itself


def test_batch_size_chunks_and_inference_mode():
    seen = []

    def record(images, prompts):
        seen.append((images.shape[0], torch.is_inference_mode_enabled()))
        return images.mean(dim=(1, 2, 3))

    r = create_reward(record, batch_size=2, needs_prompt=False)
    s = r.score(_img([0.1, 0.2, 0.3, 0.4, 0.5]))
    torch.testing.assert_close(s, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert seen == [(2, True), (2, True), (1, True)]
    with pytest.raises(ValueError, match="batch_size"):
        r.configure(batch_size=0)


# ----------------------------------------------------------------------------- registry and plug-in paths


def test_unknown_name_lists_available():
    with pytest.raises(KeyError) as e:
        create_reward("no-such-reward")
    msg = str(e.value)
    for name in ("imagereward", "clip-score", "hpsv2.1", "pickscore", "aesthetic", "ensemble"):
        assert name in msg
    assert "package.module:object" in msg


def test_register_decorator_class_and_factory(registry_snapshot):
    @register_reward()
    class Brightness(Reward):
        name = "test-brightness"
        needs_prompt = False

        def __init__(self, gain: float = 1.0):
            super().__init__()
            self.gain = gain

        def _score(self, images, prompts):
            return self.gain * images.mean(dim=(1, 2, 3))

    @register_reward("test-factory")
    def make(gain: float = 1.0) -> Reward:
        return Brightness(gain=gain)

    assert {"test-brightness", "test-factory"} <= set(list_rewards())
    torch.testing.assert_close(
        create_reward("test-brightness", gain=2.0).score(_img([0.25])), torch.tensor([0.5])
    )
    torch.testing.assert_close(
        create_reward("test-factory", gain=4.0).score(_img([0.25])), torch.tensor([1.0])
    )
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test-brightness")(make)
    with pytest.raises(ValueError, match="invalid reward name"):
        register_reward("a:b")(make)


def test_instance_and_class_pass_through():
    inst = FunctionReward(mean_brightness, needs_prompt=False)
    assert create_reward(inst) is inst
    with pytest.raises(TypeError, match="already built"):
        create_reward(inst, gain=2)
    with pytest.raises(TypeError, match="not a rewards.Reward subclass"):
        create_reward(dict)
    with pytest.raises(TypeError, match="cannot make a reward"):
        create_reward(3)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A user package on sys.path with a Reward subclass, an instance and a plain function."""
    (tmp_path / "user_rewards.py").write_text(
        textwrap.dedent("""
        import torch
        from rewards import Reward

        class Red(Reward):
            name = "red"
            needs_prompt = False
            def __init__(self, scale=1.0):
                super().__init__()
                self.scale = scale
            def _score(self, images, prompts):
                return self.scale * images[:, 0].mean(dim=(1, 2))

        INSTANCE = Red(scale=3.0)

        def words(images, prompts):
            return torch.tensor([float(len(p.split())) for p in prompts])
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_rewards"
    sys.modules.pop("user_rewards", None)


def test_import_path(plugin_module):
    x = _img([0.5, 0.25])
    torch.testing.assert_close(
        create_reward("user_rewards:Red", scale=2.0).score(x), torch.tensor([1.0, 0.5])
    )
    torch.testing.assert_close(create_reward("user_rewards:INSTANCE").score(x), torch.tensor([1.5, 0.75]))
    fn = create_reward("user_rewards:words")
    assert fn.name == "user_rewards:words"
    assert fn.score(x, ["a b c", "d"]).tolist() == [3.0, 1.0]
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        create_reward("user_rewards:Nope")
    with pytest.raises(ImportError, match="no_such_module"):
        create_reward("no_such_module:x")


def test_entry_point(plugin_module, tmp_path, monkeypatch):
    # a real installed distribution: a .dist-info with entry_points.txt on sys.path
    dist = tmp_path / "user_rewards-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: user-rewards\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{rewards.ENTRY_POINT_GROUP}]\nred-plugin = user_rewards:Red\nword-count = user_rewards:words\n"
    )
    importlib.invalidate_caches()  # importlib.metadata caches directory listings
    assert {"red-plugin", "word-count"} <= {
        ep.name for ep in importlib.metadata.entry_points(group=rewards.ENTRY_POINT_GROUP)
    }
    assert {"red-plugin", "word-count"} <= set(list_rewards())
    torch.testing.assert_close(create_reward("red-plugin", scale=2.0).score(_img([0.5])), torch.tensor([1.0]))
    assert create_reward("word-count").score(_img([0.5]), ["x y"]).tolist() == [2.0]
    cfg = RewardConfig(name="red-plugin", options={"scale": 4.0}, weights_dir=str(tmp_path))
    torch.testing.assert_close(build_reward(cfg).score(_img([0.5])), torch.tensor([2.0]))


def test_entry_point_clashing_with_builtin(tmp_path, monkeypatch):
    dist = tmp_path / "clash-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clash\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{rewards.ENTRY_POINT_GROUP}]\naesthetic = os:getcwd\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(ValueError, match="both registered in ttsvar and an entry point"):
        create_reward("aesthetic")


# ----------------------------------------------------------------------------- config


def test_build_reward_from_yaml_via_omegaconf(plugin_module, tmp_path):
    from omegaconf import OmegaConf

    yaml = textwrap.dedent("""
        reward:
          name: user_rewards:Red
          options: {scale: 2.0}
          nan_policy: -.inf
          batch_size: 1
    """)
    node = OmegaConf.merge(
        OmegaConf.create({"reward": OmegaConf.structured(RewardConfig)}), OmegaConf.create(yaml)
    )
    r = build_reward(node.reward)
    assert r.nan_policy == float("-inf") and r.batch_size == 1
    torch.testing.assert_close(r.score(_img([0.5, 0.25])), torch.tensor([1.0, 0.5]))
    r2 = build_reward({"name": "user_rewards:Red", "weights_dir": str(tmp_path)})  # Red takes no weights_dir
    assert r2.scale == 1.0
    with pytest.raises(ValueError, match="unknown reward config keys"):
        build_reward({"name": "user_rewards:Red", "option": {}})


def test_weights_dir_is_forwarded(tmp_path):
    with pytest.raises(rewards.WeightsNotFoundError) as e:
        build_reward(RewardConfig(name="hpsv2.1", weights_dir=str(tmp_path)))
    assert str(tmp_path / "HPS_v2.1_compressed.pt") in str(e.value)


# ----------------------------------------------------------------------------- ensembles


def test_zscore_against_numpy():
    rng = np.random.default_rng(0)
    s = rng.normal(size=9)
    g = np.array([3, 3, 1, 3, 1, 7, 1, 1, 3])
    ref = np.empty(9)
    for k in np.unique(g):
        m = g == k
        ref[m] = (s[m] - s[m].mean()) / (s[m].std() + 1e-6)
    out = zscore(torch.tensor(s, dtype=torch.float32), torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert out[5] == 0.0  # a group of one scores 0


def _ensemble(**kw):
    return create_reward(
        "ensemble",
        members=[
            {
                "reward": FunctionReward(mean_brightness, needs_prompt=False),
                "weight": 2.0,
                "norm": {"kind": "affine", "scale": 10.0, "shift": -5.0},
            },
            {"reward": FunctionReward(prompt_length), "weight": 0.5, "norm": {"kind": "zscore"}},
        ],
        **kw,
    )


def test_ensemble_weighted_sum_with_groups():
    r = _ensemble()
    assert r.needs_prompt and r.input_size is None
    x = _img([0.1, 0.4, 0.3, 0.9])
    prompts = ["aa", "aaaa", "b", "bbb"]
    groups = [0, 0, 1, 1]
    bright = 2.0 * (10.0 * torch.tensor([0.1, 0.4, 0.3, 0.9]) - 5.0)
    length_z = 0.5 * zscore(torch.tensor([2.0, 4.0, 1.0, 3.0]), torch.tensor(groups))
    torch.testing.assert_close(r.score(x, prompts, groups=groups), bright + length_z)
    # default groups: identical prompt strings -> here every prompt is its own group -> z = 0
    torch.testing.assert_close(r.score(x, prompts), bright)
    # equivariant under a permutation that moves images, prompts and groups together
    perm = [2, 0, 3, 1]
    torch.testing.assert_close(
        r.score(x[perm], [prompts[i] for i in perm], groups=[groups[i] for i in perm]),
        (bright + length_z)[perm],
    )
    assert len(r.member_scores(x, prompts)) == 2


def test_a_nested_ensemble_standardises_within_the_callers_groups():
    x = _img([0.1, 0.4, 0.3, 0.9])
    prompts = ["aa", "aaaa", "b", "bbb"]
    groups = [0, 0, 1, 1]
    outer = create_reward("ensemble", members=[{"reward": _ensemble(), "weight": 1.0}])
    torch.testing.assert_close(outer.score(x, prompts, groups=groups), _ensemble().score(x, prompts, groups=groups))


def test_ensemble_from_names_and_config(plugin_module):
    cfg = RewardConfig(
        name="ensemble",
        options={
            "members": [
                {"name": "user_rewards:Red", "options": {"scale": 2.0}},
                {"name": "user_rewards:words", "weight": -1.0, "norm": {"kind": "affine", "scale": 0.5}},
            ]
        },
    )
    r = build_reward(cfg)
    s = r.score(_img([0.5, 0.25]), ["a b", "c d e f"])
    torch.testing.assert_close(s, torch.tensor([1.0 - 1.0, 0.5 - 2.0]))


def test_ensemble_nan_policy_and_bad_specs():
    members = [
        {"reward": create_reward(nan_at_one, nan_policy="pass"), "norm": {"kind": "affine", "scale": 2.0}}
    ]
    x, p = _img([0.1, 0.2, 0.3]), ["a", "b", "c"]
    with pytest.raises(RewardOutputError, match="non-finite"):
        create_reward("ensemble", members=members).score(x, p)
    s = create_reward("ensemble", members=members, nan_policy=-1.0).score(x, p)
    assert s.tolist() == [1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="non-empty list"):
        EnsembleReward([])
    with pytest.raises(ValueError, match="unknown keys"):
        EnsembleReward([{"name": "x", "wieght": 1}])
    with pytest.raises(ValueError, match="exactly one of 'name'"):
        EnsembleReward([{"weight": 1}])
    with pytest.raises(ValueError, match="normalisation kind"):
        EnsembleReward([{"reward": FunctionReward(prompt_length), "norm": {"kind": "minmax"}}])


def test_ensemble_batch_size_goes_to_members():
    seen = []

    def record(images, prompts):
        seen.append(images.shape[0])
        return images.mean(dim=(1, 2, 3))

    own = FunctionReward(record, needs_prompt=False).configure(batch_size=1)
    r = create_reward(
        "ensemble",
        members=[{"reward": FunctionReward(record, needs_prompt=False)}, {"reward": own}],
        batch_size=2,
    )
    torch.testing.assert_close(r.score(_img([0.1, 0.2, 0.3])), 2 * torch.tensor([0.1, 0.2, 0.3]))
    assert seen == [
        2,
        1,
        1,
        1,
        1,
    ]  # the first member takes the ensemble's batch_size, the second keeps its own


class Scaled(Reward):
    """A reward class with a declared scale, built by the factories below (module level, as user code is, so
    a factory's `-> Scaled` annotation resolves)."""

    name = "scaled-test"
    score_scale = 0.05

    def _score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def test_a_registered_factory_declares_its_scale_and_weights_dir_reaches_the_declaration(registry_snapshot):
    from rewards.config import reward_score_scale

    @register_reward("scaled-annotated")
    def annotated(**options) -> Scaled:
        return Scaled()

    @register_reward("scaled-declared", score_scale=0.5)
    def declared(**options):
        return Scaled()

    @register_reward("scaled-silent")
    def silent(**options):
        return Scaled()

    assert reward_score_scale(RewardConfig(name="scaled-annotated")) == (0.05, True)
    assert reward_score_scale(RewardConfig(name="scaled-declared")) == (0.5, True)
    assert reward_score_scale(RewardConfig(name="scaled-silent")) == (1.0, False)  # unknown before it is built
    with pytest.raises(TypeError, match="declares its scale itself"):
        register_reward("scaled-class", score_scale=1.0)(Scaled)

    class FromWeights(Reward):
        name = "from-weights-test"

        def __init__(self, weights_dir: str | None = None):
            super().__init__()

        @classmethod
        def declared_score_scale(cls, weights_dir: str | None = None, **options):
            return 8.0 if weights_dir else None

        def _score(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    register_reward()(FromWeights)
    assert reward_score_scale(RewardConfig(name="from-weights-test", weights_dir="/models")) == (8.0, True)


def test_zscore_rules_out_non_finite_scores_without_spoiling_their_group():
    s = torch.tensor([-float("inf"), 0.5, 0.5, 1.5, 2.0, 4.0])
    z = zscore(s, torch.tensor([0, 0, 0, 0, 1, 1]))
    assert z[0] == -float("inf") and torch.isfinite(z[1:]).all()
    torch.testing.assert_close(z[1:4], zscore(s[1:4], torch.zeros(3, dtype=torch.long)))
    torch.testing.assert_close(z[4:], torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)


def test_a_nan_weight_and_a_nan_policy_of_plus_inf_are_refused():
    with pytest.raises(ValueError, match="weight must be a finite number"):
        create_reward("ensemble", members=[{"name": "shapes-clip", "weight": float("nan")}])
    with pytest.raises(ValueError, match="nan_policy=inf is invalid"):
        create_reward(mean_brightness, needs_prompt=False, nan_policy=float("inf"))
