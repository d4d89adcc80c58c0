"""The tiny shapes CLIP (ttsvar.testbed.clip): tokenizer, open_clip model, loss, training, I/O, scoring."""

import copy
import json

import numpy as np
import pytest
import torch

from ttsvar.testbed import clip as C
from ttsvar.testbed import world

# a model small enough to train for a few steps in a test
TINY = copy.deepcopy(C.SHAPES_CLIP_CONFIG)
TINY["embed_dim"] = 16
TINY["vision_cfg"].update(patch_size=8, width=32, layers=1, head_width=16)
TINY["text_cfg"].update(width=32, heads=2, layers=1)


def _tiny_clip(seed=0):
    torch.manual_seed(seed)
    model = C.build_shapes_clip(TINY)
    model.shapes_cfg = TINY
    return model.eval()


def test_tokenizer_layout_and_errors():
    tok = C.ShapesTokenizer()
    ids = tok(["a photo of a circle", "a photo of a red circle and a blue triangle"])
    assert ids.shape == (2, C.CONTEXT_LENGTH) and ids.dtype == torch.long
    words = [world.VOCAB.index(w) for w in "a photo of a circle".split()]
    assert ids[0].tolist() == [C.SOT_ID, *words, C.EOT_ID] + [0] * (C.CONTEXT_LENGTH - 7)
    assert (ids.argmax(-1) == torch.tensor([6, 11])).all()  # EOT is the largest id: open_clip's argmax pooling
    assert C.CONTEXT_LENGTH == 12 and ids[1, -1] == C.EOT_ID
    with pytest.raises(ValueError, match="'dog'"):
        tok("a photo of a dog")
    with pytest.raises(ValueError, match="context_length=5"):
        tok("a photo of a circle", context_length=5)


def test_model_is_a_plain_open_clip_clip_within_the_size_budget():
    import open_clip

    model = C.build_shapes_clip()
    assert isinstance(model, open_clip.CLIP)
    keys = set(model.state_dict())
    assert {
        "visual.conv1.weight",
        "visual.proj",
        "token_embedding.weight",
        "text_projection",
        "logit_bias",
    } <= keys
    n_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert n_bytes <= 5 * 2**20
    assert model.visual.preprocess_cfg["mean"] == C.SHAPES_CLIP_PREPROCESS["mean"]
    # text features are read at EOT; what follows it (padding) cannot change them (causal mask)
    tok = C.ShapesTokenizer()("a photo of a blue square")
    other = tok.clone()
    other[0, 8:] = 5
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tok), model.encode_text(other))


def test_siglip_loss_matches_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g) * 3
    truth = torch.randint(-1, 2, (5, 7), generator=g).to(torch.int8)
    got = C.siglip_loss(logits, truth)
    x, t = logits.double(), truth.double()
    ref = 0.0
    for i in range(5):
        for j in range(7):
            if t[i, j] >= 0:
                p = 1 / (1 + torch.exp(-x[i, j]))
                ref -= torch.log(p if t[i, j] == 1 else 1 - p)
    assert got.item() == pytest.approx(ref.item() / 5, rel=1e-5)


def test_tag_weights_make_every_tag_count_the_same():
    prompts = world.prompts_of("train")
    w = C.tag_weights(prompts)
    assert w.shape == (179,) and w.mean().item() == pytest.approx(1.0)
    per_tag = {t: sum(float(x) for x, m in zip(w, prompts) if m["tag"] == t) for t in world.TAGS}
    assert max(per_tag.values()) == pytest.approx(min(per_tag.values()))
    logits, truth = torch.randn(3, 179), torch.randint(0, 2, (3, 179))
    assert C.siglip_loss(logits, truth, torch.ones(179)).item() == pytest.approx(C.siglip_loss(logits, truth).item())


def test_short_training_run_decreases_the_loss_and_is_reproducible():
    cfg = C.TrainConfig(steps=40, batch=32, seed=3, lr=3e-3, warmup=5, log_every=1, threads=1)
    model, metrics = C.train_clip(cfg, model_config=TINY, eval_images_per_prompt=0, log=lambda s: None)
    losses = [loss for _, loss in metrics["loss_curve"]]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    cfg2 = C.TrainConfig(steps=3, batch=8, seed=3, warmup=2, log_every=1, threads=1)
    a, _ = C.train_clip(cfg2, model_config=TINY, eval_images_per_prompt=0, log=lambda s: None)
    b, _ = C.train_clip(cfg2, model_config=TINY, eval_images_per_prompt=0, log=lambda s: None)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_save_and_load_round_trip_and_strict_errors(tmp_path):
    model = _tiny_clip()
    wfile, cfile = C.save_shapes_clip(model, tmp_path / "mini", {"seed": 1, "command": "test"})
    assert wfile.name == "mini.safetensors" and cfile.name == "mini.json"
    cfg = json.loads(cfile.read_text())
    assert cfg["model_cfg"] == TINY and cfg["training"]["seed"] == 1 and cfg["tokenizer"]["vocab"] == world.VOCAB
    clip = C.load_shapes_clip(tmp_path / "mini")
    images = world.make_dataset(6, 0)[0]
    prompts = [m["prompt"] for m in world.eval_prompts(1, 0)]
    ref = C.ShapesCLIP(model).score(images, prompts)
    assert torch.equal(clip.score(images, prompts), ref)

    from safetensors.torch import load_file, save_file

    state = load_file(str(wfile))
    del state["logit_bias"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    (tmp_path / "broken.json").write_text(cfile.read_text())
    with pytest.raises(ValueError, match=r"broken.safetensors.*missing keys \['logit_bias'\]"):
        C.load_shapes_clip(tmp_path / "broken")
    state = load_file(str(wfile))
    state["visual.proj"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match=r"wrong shapes \(file, config\) \[\('visual.proj'"):
        C.load_shapes_clip(tmp_path / "broken")
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        C.load_shapes_clip(tmp_path / "nothere")


def test_score_and_features_interfaces():
    clip = C.ShapesCLIP(_tiny_clip())
    images = world.make_dataset(5, 1)[0]
    prompts = [m["prompt"] for m in world.eval_prompts(1, 1)][:5]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    s = clip.score(x, prompts)
    assert s.shape == (5,) and s.dtype == torch.float32 and s.device.type == "cpu"
    assert torch.allclose(clip.score(images, prompts), s)  # uint8 HWC numpy is accepted too
    perm = [3, 0, 4, 1, 2]
    assert torch.allclose(clip.score(x[perm], [prompts[i] for i in perm]), s[perm], atol=1e-5)
    assert torch.allclose(torch.cat([clip.score(x[:2], prompts[:2]), clip.score(x[2:], prompts[2:])]), s, atol=1e-5)
    # larger inputs are resized to 32x32 first: an exact 2x upsampling scores like the original
    big = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.allclose(clip.score(big, prompts), s, atol=1e-4)
    # the score is logit_scale * cosine + logit_bias, computed from the embeddings
    img, txt = clip.encode_images(x), clip.encode_texts(prompts)
    assert torch.allclose(img.norm(dim=-1), torch.ones(5)) and torch.allclose(txt.norm(dim=-1), torch.ones(5))
    ref = (img.double() * txt.double()).sum(-1) * clip.model.logit_scale.exp().double() + clip.model.logit_bias.double()
    assert torch.allclose(s.double(), ref, atol=1e-4)
    assert np.allclose(clip.score_matrix(x, prompts).diagonal(), s.numpy(), atol=1e-4)
    f = clip.extract(x)
    assert f.shape == (5, TINY["embed_dim"]) and f.dtype == np.float32
    with pytest.raises(ValueError, match="one prompt per image"):
        clip.score(x, prompts[:4])
    with pytest.raises(ValueError, match=r"in \[0,1\]"):
        clip.score(x * 255, prompts)
    with pytest.raises(ValueError, match="float"):
        clip.score((x * 255).byte(), prompts)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        clip.score(x[0], prompts)


class _Oracle:
    """Scores with the exact evaluator, to pin down what evaluate_clip's metrics mean."""

    def __init__(self, sign=1.0):
        self.sign = sign

    def score_matrix(self, images, prompts):
        from ttsvar.eval.geneval import check_metadata
        from ttsvar.testbed.evaluator import ShapesEvaluator

        md = {m["prompt"]: m for m in world.prompts_of()}
        dets = [ShapesEvaluator().detect(img) for img in images]
        return np.array([[self.sign * check_metadata(d, md[p])[0] for p in prompts] for d in dets], float)


def test_evaluate_clip_metrics_on_an_oracle_and_an_anti_oracle():
    good = C.evaluate_clip(_Oracle(), "heldout", images_per_prompt=1, seed=0)
    assert good["n_images"] == good["n_prompts"] == len(world.prompts_of("heldout"))
    assert good["t2i_r1"] == good["i2t_r1"] == good["pair_acc"] == good["auroc"] == good["prompt_auroc"] == 1.0
    assert good["pearson"] == pytest.approx(1.0)
    bad = C.evaluate_clip(_Oracle(-1.0), "heldout", images_per_prompt=1, seed=0)
    assert bad["pair_acc"] == bad["auroc"] == bad["prompt_auroc"] == 0.0 and bad["pearson"] == pytest.approx(-1.0)
    assert set(good["per_tag"]) == set(world.TAGS) - {"single_object"}


def test_shipped_weights_follow_prompts():
    """The CLIP in ttsvar/testbed/weights loads strictly and ranks correct captions above perturbed ones."""
    clip = C.load_shapes_clip()
    assert clip.record.get("seed") is not None and "command" in clip.record
    rng = np.random.default_rng(0)
    prompts = world.eval_prompts(8, seed=99)
    images = world.render_batch([world.sample_scene_for(m, rng) for m in prompts])
    from ttsvar.testbed.evaluator import ShapesEvaluator

    ev = ShapesEvaluator()
    wins = []
    for img, m in zip(images, prompts):
        neg = world.perturb_prompt(m, rng)
        if not ev.evaluate(img, neg).correct:
            s = clip.score(img[None].repeat(2, 0), [m["prompt"], neg["prompt"]])
            wins.append(bool(s[0] > s[1]))
    assert len(wins) >= 40 and np.mean(wins) >= 0.8
