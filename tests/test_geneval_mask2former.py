"""GenEval's Mask2Former without mmdet (ttsvar.eval.mask2former): the mmdet -> transformers key conversion on a
synthetic state dict with mmdet 2.x's key names (from mmdet's SwinTransformer, MSDeformAttnPixelDecoder and
Mask2FormerHead), strict loading, mmdet's test pipeline sizes and its instance post-processing. The real weights
are not here: numerics against mmdet are not checked (docs/geneval.md)."""

import json

import numpy as np
import pytest
import torch

from ttsvar.core.errors import InputError
from ttsvar.eval import mask2former as m2f

TINY = m2f.Mask2FormerSize(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=7, hidden_dim=32,
                           encoder_layers=1, encoder_ffn=16, decoder_layers=3, decoder_ffn=16, num_queries=5,
                           num_classes=80)


def mmdet_state_dict(s: m2f.Mask2FormerSize, seed: int = 0) -> dict:
    """Random tensors under the keys (and shapes) mmdet 2.x's Mask2Former with a Swin backbone saves."""
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}

    def add(key, *shape):
        sd[key] = torch.randn(*shape, generator=g)

    C, H = s.embed_dim, s.hidden_dim
    add("backbone.patch_embed.projection.weight", C, 3, 4, 4)
    add("backbone.patch_embed.projection.bias", C)
    for n in ("weight", "bias"):
        add(f"backbone.patch_embed.norm.{n}", C)
    chans = [C * 2**i for i in range(4)]
    for i, (d, heads, c) in enumerate(zip(s.depths, s.num_heads, chans)):
        for b in range(d):
            p = f"backbone.stages.{i}.blocks.{b}."
            for n in ("weight", "bias"):
                add(p + f"norm1.{n}", c)
                add(p + f"norm2.{n}", c)
            add(p + "attn.w_msa.relative_position_bias_table", (2 * s.window_size - 1) ** 2, heads)
            sd[p + "attn.w_msa.relative_position_index"] = torch.zeros(s.window_size**2, s.window_size**2,
                                                                        dtype=torch.long)
            add(p + "attn.w_msa.qkv.weight", 3 * c, c)
            add(p + "attn.w_msa.qkv.bias", 3 * c)
            add(p + "attn.w_msa.proj.weight", c, c)
            add(p + "attn.w_msa.proj.bias", c)
            add(p + "ffn.layers.0.0.weight", 4 * c, c)
            add(p + "ffn.layers.0.0.bias", 4 * c)
            add(p + "ffn.layers.1.weight", c, 4 * c)
            add(p + "ffn.layers.1.bias", c)
        if i < 3:
            add(f"backbone.stages.{i}.downsample.norm.weight", 4 * c)
            add(f"backbone.stages.{i}.downsample.norm.bias", 4 * c)
            add(f"backbone.stages.{i}.downsample.reduction.weight", 2 * c, 4 * c)
        for n in ("weight", "bias"):
            add(f"backbone.norm{i}.{n}", c)
    p = "panoptic_head.pixel_decoder."
    for i, c in enumerate(chans[::-1][:3]):
        add(p + f"input_convs.{i}.conv.weight", H, c, 1, 1)
        add(p + f"input_convs.{i}.conv.bias", H)
        add(p + f"input_convs.{i}.gn.weight", H)
        add(p + f"input_convs.{i}.gn.bias", H)
    for layer in range(s.encoder_layers):
        q = p + f"encoder.layers.{layer}."
        add(q + "attentions.0.sampling_offsets.weight", 8 * 3 * 4 * 2, H)
        add(q + "attentions.0.sampling_offsets.bias", 8 * 3 * 4 * 2)
        add(q + "attentions.0.attention_weights.weight", 8 * 3 * 4, H)
        add(q + "attentions.0.attention_weights.bias", 8 * 3 * 4)
        for n in ("value_proj", "output_proj"):
            add(q + f"attentions.0.{n}.weight", H, H)
            add(q + f"attentions.0.{n}.bias", H)
        add(q + "ffns.0.layers.0.0.weight", s.encoder_ffn, H)
        add(q + "ffns.0.layers.0.0.bias", s.encoder_ffn)
        add(q + "ffns.0.layers.1.weight", H, s.encoder_ffn)
        add(q + "ffns.0.layers.1.bias", H)
        for k in (0, 1):
            add(q + f"norms.{k}.weight", H)
            add(q + f"norms.{k}.bias", H)
    add(p + "level_encoding.weight", 3, H)
    add(p + "lateral_convs.0.conv.weight", H, C, 1, 1)  # bias=False under GroupNorm
    add(p + "lateral_convs.0.gn.weight", H)
    add(p + "lateral_convs.0.gn.bias", H)
    add(p + "output_convs.0.conv.weight", H, H, 3, 3)
    add(p + "output_convs.0.gn.weight", H)
    add(p + "output_convs.0.gn.bias", H)
    add(p + "mask_feature.weight", H, H, 1, 1)
    add(p + "mask_feature.bias", H)
    p = "panoptic_head."
    for layer in range(s.decoder_layers):
        q = p + f"transformer_decoder.layers.{layer}."
        for a in (0, 1):  # 0: cross-attention, 1: self-attention (operation_order)
            add(q + f"attentions.{a}.attn.in_proj_weight", 3 * H, H)
            add(q + f"attentions.{a}.attn.in_proj_bias", 3 * H)
            add(q + f"attentions.{a}.attn.out_proj.weight", H, H)
            add(q + f"attentions.{a}.attn.out_proj.bias", H)
        add(q + "ffns.0.layers.0.0.weight", s.decoder_ffn, H)
        add(q + "ffns.0.layers.0.0.bias", s.decoder_ffn)
        add(q + "ffns.0.layers.1.weight", H, s.decoder_ffn)
        add(q + "ffns.0.layers.1.bias", H)
        for k in (0, 1, 2):
            add(q + f"norms.{k}.weight", H)
            add(q + f"norms.{k}.bias", H)
    add(p + "transformer_decoder.post_norm.weight", H)
    add(p + "transformer_decoder.post_norm.bias", H)
    add(p + "query_embed.weight", s.num_queries, H)
    add(p + "query_feat.weight", s.num_queries, H)
    add(p + "level_embed.weight", 3, H)
    add(p + "cls_embed.weight", s.num_classes + 1, H)
    add(p + "cls_embed.bias", s.num_classes + 1)
    for i in (0, 2, 4):
        add(p + f"mask_embed.{i}.weight", H, H)
        add(p + f"mask_embed.{i}.bias", H)
    return sd


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("m2f") / m2f.CHECKPOINT
    sd = mmdet_state_dict(TINY)
    torch.save({"meta": {"mmdet_version": "2.25.0"}, "state_dict": sd}, path)
    return path, sd


def test_conversion_loads_strictly_and_moves_every_tensor(tiny_checkpoint):
    path, sd = tiny_checkpoint
    model = m2f.build_mask2former(path, TINY)
    own = model.state_dict()
    p = "panoptic_head.transformer_decoder.layers.1."
    assert torch.equal(own["class_predictor.weight"], sd["panoptic_head.cls_embed.weight"])
    assert torch.equal(own["model.transformer_module.decoder.mask_predictor.mask_embedder.2.0.weight"],
                       sd["panoptic_head.mask_embed.4.weight"])
    assert torch.equal(own["model.transformer_module.decoder.layers.1.self_attn.k_proj.weight"],
                       sd[p + "attentions.1.attn.in_proj_weight"][32:64])
    assert torch.equal(own["model.transformer_module.decoder.layers.1.cross_attn.in_proj_weight"],
                       sd[p + "attentions.0.attn.in_proj_weight"])
    assert torch.equal(own["model.pixel_level_module.encoder.hidden_states_norms.stage4.bias"],
                       sd["backbone.norm3.bias"])
    assert torch.equal(own["model.pixel_level_module.decoder.level_embed"],
                       sd["panoptic_head.pixel_decoder.level_encoding.weight"])


def test_patch_merging_order_is_converted_from_mmdets_unfold():
    """mmdet's PatchMerging (nn.Unfold 2x2, then norm, then reduction) equals transformers' after conversion."""
    from transformers.models.swin.modeling_swin import SwinPatchMerging

    c, hw = 4, (6, 6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, hw[0] * hw[1], c, generator=g)
    w, nw, nb = torch.randn(2 * c, 4 * c, generator=g), torch.randn(4 * c, generator=g), torch.randn(4 * c, generator=g)
    # mmdet 2.x PatchMerging.forward
    grid = x.view(1, *hw, c).permute(0, 3, 1, 2)
    cols = torch.nn.functional.unfold(grid, kernel_size=2, stride=2).transpose(1, 2)  # [1, L, 4C], (c, dy, dx)
    ref = torch.nn.functional.layer_norm(cols, (4 * c,), nw, nb) @ w.T
    hf = SwinPatchMerging(c)
    sd = m2f.convert_mmdet_state_dict({"backbone.stages.0.downsample.reduction.weight": w,
                                       "backbone.stages.0.downsample.norm.weight": nw,
                                       "backbone.stages.0.downsample.norm.bias": nb})
    prefix = "model.pixel_level_module.encoder.swin.encoder.layers.0.downsample."
    hf.load_state_dict({k[len(prefix):]: v for k, v in sd.items()})
    torch.testing.assert_close(hf(x, hw), ref)


def test_a_missing_or_extra_key_is_refused_naming_the_file_and_keys(tiny_checkpoint, tmp_path):
    _, sd = tiny_checkpoint
    short = {k: v for k, v in sd.items() if k != "panoptic_head.query_feat.weight"}
    with pytest.raises(InputError, match=r"short\.pth does not fit .*missing model\.transformer_module\."
                                         r"queries_features\.weight"):
        torch.save({"state_dict": short}, tmp_path / "short.pth")
        m2f.build_mask2former(tmp_path / "short.pth", TINY)
    extra = {**sd, "panoptic_head.extra_head.weight": torch.zeros(1)}
    torch.save({"state_dict": extra}, tmp_path / "extra.pth")
    with pytest.raises(InputError, match=r"extra\.pth: 1 key\(s\) .* panoptic_head\.extra_head\.weight"):
        m2f.build_mask2former(tmp_path / "extra.pth", TINY)
    big = m2f.Mask2FormerSize(**{**TINY.__dict__, "decoder_layers": 2})  # one decoder layer too many in the file
    with pytest.raises(InputError, match=r"unexpected model\.transformer_module\.decoder\.layers\.2\."):
        m2f.build_mask2former(sd, big, where="ckpt")


def test_missing_weights_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="needs GenEval's detector weights: --model-path"):
        m2f.Mask2FormerEvaluator()
    with pytest.raises(InputError, match="holds no mask2former_swin-s"):
        m2f.Mask2FormerEvaluator(model_path=str(tmp_path))
    (tmp_path / m2f.CHECKPOINT).write_bytes(b"")
    with pytest.raises(InputError, match="--clip-weights"):
        m2f.Mask2FormerEvaluator(model_path=str(tmp_path))
    with pytest.raises(InputError, match="--clip-weights: .* is a folder"):
        m2f.Mask2FormerEvaluator(model_path=str(tmp_path), clip_weights=str(tmp_path))


def test_the_checkpoint_in_every_form_a_user_has_it(tiny_checkpoint, tmp_path):
    """The model zoo's own file name in a folder, mmcv's legacy (non-zip) save, a DataParallel prefix; and an
    empty file (what a failed `wget -O` leaves), an HTML error page or a truncated file in one clear line."""
    path, sd = tiny_checkpoint
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    hashed = zoo / (m2f.CHECKPOINT.removesuffix(".pth") + "_20220504_001756-743b7d99.pth")
    torch.save({"meta": {"CLASSES": ("person",)}, "state_dict": {"module." + k: v for k, v in sd.items()}}, hashed,
               _use_new_zipfile_serialization=False)
    assert m2f.find_checkpoint(zoo) == hashed
    m2f.build_mask2former(hashed, TINY)
    bad = tmp_path / "bad"
    bad.mkdir()
    for content, says in ((b"", "it is empty"), (b"<html>404 Not Found</html>", "not a torch checkpoint"),
                          (path.read_bytes()[:5000], "truncated or corrupt")):
        (bad / m2f.CHECKPOINT).write_bytes(content)
        with pytest.raises(InputError, match=says) as e:
            m2f.build_mask2former(m2f.find_checkpoint(bad), TINY)
        assert "\n" not in str(e.value) and "weights_only` argument" not in str(e.value)


def test_the_colour_classifier_uses_openais_activation(monkeypatch, tmp_path):
    """GenEval builds ViT-L-14 with open_clip's 'openai' tag, which means QuickGELU; a bare weights file must get
    it too (the built-in ViT-L-14 config says GELU, which changes every embedding, silently)."""
    import rewards.open_clip_loader as loader

    seen = {}

    def fake(arch, weights, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(loader, "load_open_clip", fake)
    with pytest.raises(RuntimeError, match="stop here"):
        m2f.ColorClassifier(tmp_path / "vit_l14_openai.safetensors")
    assert seen["quick_gelu"] is True


def test_test_pipeline_sizes():
    assert m2f.resized_shape(512, 512) == (800, 800)  # GenEval's images: short edge 800
    assert m2f.resized_shape(1024, 2048) == (667, 1333)  # long edge 1333 binds
    x, resized = m2f.preprocess(np.zeros((100, 50, 3), np.uint8))
    assert resized == (1333, 667) and tuple(x.shape) == (1, 3, 1344, 672)
    mean, std = torch.tensor(m2f.MEAN), torch.tensor(m2f.STD)
    torch.testing.assert_close(x[0, :, 1332, 666], -mean / std)  # the image
    # mmdet's lsj config pads with 128 before normalising (Pad, then Normalize): the padding is not 0
    torch.testing.assert_close(x[0, :, 1333, 0], (128 - mean) / std)
    torch.testing.assert_close(x[0, :, -1, -1], (128 - mean) / std)


def test_instance_postprocess_and_mask_boxes():
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert m2f.mask_to_box(masks).tolist() == [[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0]]
    q, c = 3, 4
    logits = torch.full((q, c + 1), -10.0)
    logits[0, 2] = 10.0  # query 0: class 2, confident
    mask_logits = torch.full((q, 4, 4), -5.0)
    mask_logits[0] = 5.0  # query 0's mask: the whole image
    labels, scores, boxes, binary = m2f.postprocess(logits, mask_logits, (16, 16), (16, 16), (16, 16),
                                                    max_per_image=5)
    best = int(scores.argmax())
    assert int(labels[best]) == 2 and boxes[best].tolist() == [0.0, 0.0, 16.0, 16.0]
    # class probability x mean sigmoid inside the mask
    expected = torch.softmax(logits[0], -1)[2] * torch.sigmoid(torch.tensor(5.0))
    assert float(scores[best]) == pytest.approx(float(expected), rel=1e-5)
    assert len(labels) == 5 and binary.shape == (5, 16, 16)


def test_the_converted_model_runs_end_to_end(tiny_checkpoint):
    path, _ = tiny_checkpoint
    model = m2f.build_mask2former(path, TINY)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    x, resized = m2f.preprocess(image)
    x = torch.nn.functional.interpolate(x, size=(64, 96))  # tiny input: the test checks shapes, not numerics
    with torch.inference_mode():
        out = model(pixel_values=x)
    labels, scores, boxes, masks = m2f.postprocess(out.class_queries_logits[0], out.masks_queries_logits[0],
                                                   (64, 96), (64, 96), image.shape[:2])
    assert len(labels) == m2f.MAX_PER_IMAGE and masks.shape[1:] == image.shape[:2]
    assert bool(((scores >= 0) & (scores <= 1)).all())


def test_detections_are_grouped_in_coco_order_as_mmdets_bbox2result_hands_them_to_geneval():
    """`details` in results.jsonl lists classes in COCO order, as GenEval's (found by the parity check); within a
    class the post-processing's order is kept, since GenEval's tie ranking depends on it."""
    from ttsvar.eval.geneval import Detection, FilterOptions

    ev = object.__new__(m2f.Mask2FormerEvaluator)
    ev.filter, ev.position_threshold = FilterOptions(), 0.1
    mask = np.zeros((8, 8), bool)
    raw = [Detection("dog", (0, 0, 4, 4), 0.8), Detection("person", (1, 1, 5, 5), 0.5),
           Detection("dog", (2, 2, 6, 6), 0.8), Detection("cat", (3, 3, 7, 7), 0.9)]
    ev.raw_detections = lambda image: [(d, mask) for d in raw]
    md = {"tag": "two_object", "prompt": "a photo of a dog and a cat",
          "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}]}
    rec = ev.evaluate_records([np.zeros((8, 8, 3), np.uint8)], [md], ["x.png"])[0]
    details = json.loads(rec["details"])
    assert rec["correct"] and list(details) == ["person", "cat", "dog"]
    assert [b[:2] for b in details["dog"]] == [[2.0, 2.0], [0.0, 0.0]]  # tie: numpy 1.23's reversed argsort
