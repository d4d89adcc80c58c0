"""Random-weight reward files in the official layouts, for tests and benchmarks.

No real checkpoints exist in CI, so tests and ``bench/bench_rewards.py`` write tiny (or, with
``full=True``, real-size) random weights exactly as the official files are laid out (file names, key
names, nesting) and then load them through ``create_reward``, the path users take.

``reward_files(name, folder)`` writes everything a built-in needs and returns its ``create_reward``
options; the ``write_*`` helpers return the written model so a test can compute a reference from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from rewards.imagereward_model import BlipViTConfig, ImageRewardModel, MedBertConfig, native_to_official

TINY_VIT = dict(image_size=32, patch_size=8, width=48, depth=2, heads=2)
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
BERT_SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_WORDS = [
    "a",
    "an",
    "the",
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "on",
    "of",
    "photo",
    "sofa",
    "##s",
    "big",
]
# timm's test ResNet (offline, ~0.3M parameters) with 10 classes at 32 px: the tiny `classifier`
TINY_CLASSIFIER = {"model": "test_resnet", "num_classes": 10, "preprocess_cfg": {"input_size": 32, "crop_pct": 1.0}}
SEEDS = {
    "imagereward": 0,
    "clip-score": 1,
    "hpsv2.1": 2,
    "aesthetic-clip": 3,
    "aesthetic-mlp": 4,
    "pickscore": 5,
    "classifier": 6,
}


def tiny_classifier(*, full: bool = False, seed: int = SEEDS["classifier"]):
    """A random timm classifier: `vit_base_patch16_224` (1000 classes) or `TINY_CLASSIFIER`'s model."""
    import timm

    if full:
        return randomize_(timm.create_model("vit_base_patch16_224", pretrained=False), seed, std=0.02).eval()
    net = timm.create_model(TINY_CLASSIFIER["model"], pretrained=False, num_classes=TINY_CLASSIFIER["num_classes"])
    return randomize_(net, seed, std=0.2).eval()


def randomize_(module: nn.Module, seed: int, std: float = 0.2) -> nn.Module:
    """Overwrite every parameter with N(0, std) (reproducible), so that outputs vary across inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def _cast(sd: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def write_imagereward_files(
    d: Path, *, full: bool = False, seed: int = SEEDS["imagereward"], dtype: torch.dtype = torch.float32
) -> ImageRewardModel:
    """``ImageReward.pt`` (official keys, incl. BLIP's ``position_ids``), ``med_config.json`` and a
    ``bert-base-uncased/vocab.txt``. Tiny: ``TINY_VIT`` + a 2-layer 32-wide BERT over ``TINY_WORDS``."""
    d = Path(d)
    words = [f"w{i}" for i in range(30522 - len(BERT_SPECIALS))] if full else TINY_WORDS
    (d / "bert-base-uncased").mkdir(parents=True, exist_ok=True)
    (d / "bert-base-uncased" / "vocab.txt").write_text("\n".join(BERT_SPECIALS + words) + "\n")
    size = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    if not full:
        size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    med = {
        "architectures": ["BertModel"],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "model_type": "bert",
        "max_position_embeddings": 512 if full else 40,
        "pad_token_id": 0,
        "encoder_width": 768,
        "vocab_size": len(BERT_SPECIALS) + len(words) + 2,
        "add_cross_attention": True,
        **size,
    }
    (d / "med_config.json").write_text(json.dumps(med))
    vit = BlipViTConfig() if full else BlipViTConfig(**TINY_VIT)
    model = ImageRewardModel(vit, MedBertConfig.from_json(d / "med_config.json")).eval()
    if not full:
        randomize_(model, seed)
    torch.save(_cast(native_to_official(model), dtype), d / "ImageReward.pt")
    return model


def open_clip_model(
    seed: int, *, model: str | None = None, quick_gelu: bool = False, config: dict | None = None
):
    """A random open_clip CLIP: built-in ``model`` (real size), else ``config`` or ``TINY_CLIP``."""
    import open_clip

    cfg = open_clip.get_model_config(model) if model else (config or TINY_CLIP)
    torch.manual_seed(seed)
    return open_clip.CLIP(**cfg, quick_gelu=quick_gelu).eval()


def write_hub_cache_file(d: Path, repo_id: str, filename: str, tensors: dict) -> Path:
    """Lay a safetensors file out as huggingface_hub's cache does (``refs/main`` -> ``snapshots/<rev>/``)."""
    from safetensors.torch import save_file

    repo = Path(d) / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(snap / filename))
    return snap / filename


def write_pickscore_dir(
    d: Path, *, full: bool = False, seed: int = SEEDS["pickscore"], dtype: torch.dtype = torch.float32
) -> Path:
    """``PickScore_v1/``: a ``CLIPModel`` (``save_pretrained``) plus a CLIP processor (toy letter BPE).
    Full size: CLIP ViT-H/14 as in laion/CLIP-ViT-H-14-laion2B-s32B-b79K (PickScore_v1's architecture)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = Path(d) / "PickScore_v1"
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {t: i for i, t in enumerate(list(letters) + [c + "</w>" for c in letters])}
    if full:  # CLIP's vocabulary size; the extra entries are never produced by this toy BPE
        vocab.update({f"x{i}</w>": len(vocab) + i for i in range(49406 - len(vocab))})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    size = 224 if full else 32
    CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[]),
    ).save_pretrained(str(out))
    ids = dict(
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    if full:
        text = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
        vision = dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        )
        proj = 1024
    else:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
        proj = 16
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, hidden_act="gelu", **text, **ids),
        vision_config=dict(hidden_act="gelu", **vision),
        projection_dim=proj,
    )
    torch.manual_seed(seed)
    CLIPModel(cfg).eval().to(dtype).save_pretrained(str(out))
    return out


def reward_files(name: str, d: Path, *, full: bool = False, dtype: torch.dtype = torch.float32) -> dict:
    """Write the files of built-in reward ``name`` into ``d``; return its ``create_reward`` options.

    Tiny configs run at 32 px; ``full=True`` writes the real architectures (random weights, ``dtype`` on
    disk). The ensemble combines the HPS and aesthetic files with affine/none normalisation only.
    """
    from safetensors.torch import save_file

    from rewards.aesthetic import AestheticMLP

    d = Path(d)
    if name == "imagereward":
        write_imagereward_files(d, full=full, dtype=dtype)
        return {"weights_dir": str(d)} if full else {"weights_dir": str(d), "vit": TINY_VIT}
    if name == "clip-score":
        net = open_clip_model(SEEDS[name], model="ViT-L-14" if full else None)
        save_file(_cast(net.state_dict(), dtype), str(d / "clip.safetensors"))
        opts = {"model": "ViT-L-14", "pretrained": str(d / "clip.safetensors")}
        return opts if full else {**opts, "model": "tiny", "model_config": TINY_CLIP}
    if name == "hpsv2.1":
        net = open_clip_model(SEEDS[name], model="ViT-H-14" if full else None)
        torch.save({"state_dict": _cast(net.state_dict(), dtype)}, d / "HPS_v2.1_compressed.pt")
        return {"weights_dir": str(d)} if full else {"weights_dir": str(d), "model_config": TINY_CLIP}
    if name == "aesthetic":
        # clip_pretrained='openai' (the default) is found offline in the hub-cache layout
        net = open_clip_model(SEEDS["aesthetic-clip"], model="ViT-L-14" if full else None, quick_gelu=True)
        write_hub_cache_file(
            d,
            "timm/vit_large_patch14_clip_224.openai",
            "open_clip_model.safetensors",
            _cast(net.state_dict(), dtype),
        )
        mlp = AestheticMLP(768 if full else TINY_CLIP["embed_dim"])
        randomize_(mlp, SEEDS["aesthetic-mlp"], std=0.3)
        torch.save(mlp.state_dict(), d / "sac+logos+ava1-l14-linearMSE.pth")
        return {"weights_dir": str(d)} if full else {"weights_dir": str(d), "clip_model_config": TINY_CLIP}
    if name == "pickscore":
        write_pickscore_dir(d, full=full, dtype=dtype)
        return {"weights_dir": str(d)}
    if name == "ensemble":
        hps = reward_files("hpsv2.1", d, full=full, dtype=dtype)
        aes = reward_files("aesthetic", d, full=full, dtype=dtype)
        hps.pop("weights_dir")
        aes.pop("weights_dir")
        members = [
            {
                "name": "hpsv2.1",
                "weight": 2.0,
                "norm": {"kind": "affine", "scale": 10.0, "shift": -1.0},
                "options": hps,
            },
            {"name": "aesthetic", "weight": 0.5, "options": aes},
        ]
        return {"members": members, "weights_dir": str(d)}
    if name == "shapes-clip":
        from ttsvar.testbed.clip import build_shapes_clip, save_shapes_clip

        torch.manual_seed(7)
        save_shapes_clip(build_shapes_clip(), d / "shapes_clip", {})
        return {"weights": str(d / "shapes_clip.safetensors")}
    if name == "shapes-reward":
        from ttsvar.testbed import world
        from ttsvar.testbed.reward import ShapesRewardConfig, ShapesRewardModel, save_shapes_reward

        torch.manual_seed(7)
        cfg = ShapesRewardConfig(vocab=tuple(world.VOCAB), width=32, heads=2, det_width=8, fusion_layers=1)
        save_shapes_reward(ShapesRewardModel(cfg), d / "shapes_reward.safetensors", {"score_scale": 1.5})
        return {"weights": str(d / "shapes_reward.safetensors")}
    if name == "classifier":
        net = tiny_classifier(full=full)
        save_file(_cast(net.state_dict(), dtype), str(d / "classifier.safetensors"))
        opts = {"weights": str(d / "classifier.safetensors")}
        return opts if full else {**opts, **TINY_CLASSIFIER}
    raise KeyError(f"no test files for reward {name!r}")
