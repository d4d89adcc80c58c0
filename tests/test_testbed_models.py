"""The shipped shapes-tiny generator and the transformer's training loop; the T5 text-encoder loader."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ttsvar.core.checkpoint import CheckpointError
from ttsvar.core.generator import Rows
from ttsvar.models.registry import create_generator, list_generators
from ttsvar.testbed import world
from ttsvar.testbed.model import WEIGHTS, load_shapes_tiny
from ttsvar.testbed.train import TestbedConfig as _Config
from ttsvar.testbed.train import amp_dtype, encode_dataset, model_configs, train_generator
from ttsvar.testbed.train_vae import reconstruction_score


def test_shipped_weights_load_by_name_and_generate():
    assert "shapes-tiny" in list_generators()
    gen = create_generator("shapes-tiny")
    state = gen.start(["a photo of a red circle"], Rows.for_prompts(2, [3]))
    for _ in range(gen.num_scales):
        state = gen.step(state)
    img = gen.finish(state)
    assert img.shape == (2, 3, 32, 32) and 0 <= img.min() and img.max() <= 1
    meta = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert meta["seed"] == 0 and "command" in meta and meta["vae_eval"]["psnr"] > 25
    assert WEIGHTS.stat().st_size + WEIGHTS.with_name("shapes_clip.safetensors").stat().st_size < 30e6


@pytest.mark.parametrize("change, message", [
    ("stray", r"has 2 tensor\(s\) outside gpt\.\*, text\.\*, vae\.\*: extra\.bias, gpt_old\.w; it is not a "
              r"shapes-tiny checkpoint \(pass the shapes_tiny\.safetensors written by"),
    ("missing-key", r"\[gpt\.\*\] does not match Infinity; missing keys \(1\): head\.weight"),
    ("missing-part", r"has no 'text\.\*' tensors; it is not a shapes-tiny checkpoint \(pass "),
])
def test_weights_with_stray_or_missing_keys_are_rejected_naming_the_file_and_keys(tmp_path, change, message):
    sd = load_file(str(WEIGHTS))
    if change == "stray":
        sd["extra.bias"], sd["gpt_old.w"] = torch.zeros(2), torch.zeros(3)
    elif change == "missing-key":
        del sd["gpt.head.weight"]
    else:
        sd = {k: v for k, v in sd.items() if not k.startswith("text.")}
    bad = tmp_path / "shapes_tiny.safetensors"
    save_file(sd, str(bad))
    bad.with_suffix(".json").write_text(WEIGHTS.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match=message) as e:
        load_shapes_tiny(bad)
    assert str(bad) in str(e.value)
    if change != "missing-key":
        assert "\n" not in str(e.value)


def test_shipped_vae_reconstructions_pass_the_exact_evaluator():
    """The testbed's VAE bar (>= 0.95 on 256 scenes in the benchmark), rechecked here on fresh scenes."""
    gen = load_shapes_tiny()
    assert reconstruction_score(gen.vae, n=96, seed=77, scale_schedule=gen.vae_schedule) >= 0.9
    meta = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert meta["vae_eval"]["evaluator_score"] >= 0.95


def test_shipped_model_follows_prompts_better_than_chance():
    """Red-circle prompts give redder images than blue-square prompts (a cheap, exact check)."""
    gen = load_shapes_tiny()
    prompts = {0: "a photo of a red circle", 1: "a photo of a blue square"}
    state = gen.start(prompts, Rows.for_prompts(6, [1, 2]))
    for _ in range(gen.num_scales):
        state = gen.step(state)
    img = gen.finish(state)
    red = (img[:, 0] - img[:, 2]).mean((1, 2))
    assert red[:6].mean() > red[6:].mean() + 0.05


def test_short_training_run_decreases_the_loss():
    torch.manual_seed(0)
    tc = _Config(depth=1, embed_dim=64, num_heads=2, text_dim=32, gen_steps=30, gen_batch=16, gen_lr=3e-3,
                       gen_warmup=5, vae_bits=6, vae_ch=24)
    vcfg, icfg, wcfg = model_configs(tc)
    from ttsvar.models.infinity.generator import InfinityGenerator
    from ttsvar.models.infinity.model import Infinity
    from ttsvar.models.infinity.vae import BSQVAE, TINY_SCALE_SCHEDULE
    from ttsvar.models.text import WordTextEncoder

    vae = BSQVAE(vcfg).eval().requires_grad_(False)
    images, prompts, _ = world.make_dataset(64, 0)
    bits = encode_dataset(vae, images, "cpu")
    text = WordTextEncoder(wcfg)
    gen = InfinityGenerator(Infinity(icfg), vae, text, list(TINY_SCALE_SCHEDULE))
    m = train_generator(gen, text, bits, prompts, tc, "cpu", log=None)
    assert m["loss"][-1] < m["loss"][0] - 0.05
    assert not gen.model.training


def test_training_precision_is_validated():
    assert amp_dtype(_Config()) is torch.bfloat16 and amp_dtype(_Config(amp="fp32")) is None
    with pytest.raises(ValueError, match="TestbedConfig.amp='fp16'"):
        amp_dtype(_Config(amp="fp16"))


def test_t5_text_encoder_from_a_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from ttsvar.models.text import T5TextEncoder

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "circle": 5, "photo": 6, "of": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(tmp_path)
    cfg = transformers.T5Config(vocab_size=8, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    transformers.T5EncoderModel(cfg).save_pretrained(tmp_path)
    enc = T5TextEncoder(tmp_path)
    feats, mask = enc.encode(["a photo of a red circle", "a circle"])
    assert enc.dim == 16 and feats.shape == (2, 6, 16) and mask.sum(1).tolist() == [6, 2]
    ref = enc.model(input_ids=torch.tensor([[3, 5]]))["last_hidden_state"]
    torch.testing.assert_close(feats[1:, :2], ref, rtol=0, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="config.json"):
        T5TextEncoder(tmp_path / "missing")
    # the encoder saved alone (save_pretrained of T5EncoderModel): transformers would build an empty tokenizer
    # that reads every word as <unk>, and the images would stop depending on the prompt
    bare = tmp_path / "bare"
    transformers.T5EncoderModel(cfg).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="no tokenizer files .spiece.model or tokenizer.json."):
        T5TextEncoder(bare)


def test_released_models_need_their_files(tmp_path):
    with pytest.raises(ValueError, match="model.weights is not set"):
        create_generator("infinity-2b")
    with pytest.raises(FileNotFoundError, match="model.weights"):
        create_generator("infinity-2b", weights=str(tmp_path / "nope.pth"))
    assert {"infinity-2b", "infinity-8b", "infinity-tiny-random", "shapes-tiny"} <= set(list_generators())
