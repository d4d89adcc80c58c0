"""GenEval's detector without mmdet: Mask2Former Swin-S (COCO instances) from GenEval's own mmdet 2.x checkpoint,
plus its CLIP colour classifier; registered as evaluator `mask2former` (`ttsvar geneval score --detector`).

GenEval's `evaluation/evaluate_images.py` runs mmdet 2.x's `inference_detector` with the checkpoint
`mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth`. Here the same network is transformers'
`Mask2FormerForUniversalSegmentation` (Swin backbone, MSDeformAttn pixel decoder, masked-attention decoder: the
architecture mmdet re-implements), and `convert_mmdet_state_dict` is the one function that renames mmdet's keys
to transformers' (splitting fused q/k/v projections, undoing mmdet's unfold order in Swin's patch merging). The
checkpoint is read with ``weights_only=True`` and loaded strictly: a key left over or missing on either side is
an error naming the file and the keys.

Around the network, mmdet's test-time steps (`preprocess`, `postprocess`):
* the test pipeline of the config: resize to fit 1333x800 keeping the aspect ratio (mmcv's rounding), pad with 128
  to a multiple of 32, then normalise with mean (123.675, 116.28, 103.53) / std (58.395, 57.12, 57.375) in RGB order;
* `MaskFormerFusionHead.instance_postprocess`: softmax over 81 classes without "no object", top-100 of
  query x class scores, masks upsampled to the padded input, cropped, resized to the image, binarised at 0,
  score x mean sigmoid inside the mask, boxes from the masks (`mask2bbox`, exclusive right/bottom edges).
Then GenEval's filter (`geneval.filter_detections`) and, for colour prompts, its CLIP classifier
(`ColorClassifier`). What is and is not verified without the weights: docs/geneval.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import InputError, MissingFileError
from .evaluator import Evaluator
from .geneval import GENEVAL_COLORS, POSITION_THRESHOLD, Detection, FilterOptions, filter_detections
from .registry import register_evaluator

CHECKPOINT = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"
# mmdet's CocoDataset.CLASSES in GenEval's spelling (its evaluation/object_names.txt), index = mmdet's label
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
_CLASS_INDEX = {c: i for i, c in enumerate(COCO_CLASSES)}
MEAN = (123.675, 116.28, 103.53)  # img_norm_cfg of the config, RGB (to_rgb=True)
STD = (58.395, 57.12, 57.375)
SCALE = (1333, 800)  # img_scale of the test pipeline (long edge, short edge)
SIZE_DIVISOR = 32
PAD_VALUE = 128  # pad_cfg img=(128, 128, 128) of the config's test pipeline (Pad comes before Normalize)
MAX_PER_IMAGE = 100
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")


@dataclass(frozen=True)
class Mask2FormerSize:
    """The architecture of GenEval's checkpoint (mmdet's swin-s config); tests use a tiny one."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    hidden_dim: int = 256
    encoder_layers: int = 6
    encoder_ffn: int = 1024
    decoder_layers: int = 9  # mmdet's num_layers (transformers counts one more: the query-only prediction)
    decoder_ffn: int = 2048
    num_queries: int = 100
    num_classes: int = 80

    def hf_config(self):
        from transformers import Mask2FormerConfig, SwinConfig

        backbone = SwinConfig(embed_dim=self.embed_dim, depths=list(self.depths), num_heads=list(self.num_heads),
                              window_size=self.window_size, drop_path_rate=0.0,
                              out_features=["stage1", "stage2", "stage3", "stage4"])
        return Mask2FormerConfig(backbone_config=backbone, num_labels=self.num_classes, hidden_dim=self.hidden_dim,
                                 mask_feature_size=self.hidden_dim, feature_size=self.hidden_dim,
                                 encoder_layers=self.encoder_layers, encoder_feedforward_dim=self.encoder_ffn,
                                 decoder_layers=self.decoder_layers + 1, dim_feedforward=self.decoder_ffn,
                                 num_queries=self.num_queries, use_pretrained_backbone=False)


# ----------------------------------------------------------------------------------------------------
# mmdet keys -> transformers keys

_SWIN = "model.pixel_level_module.encoder."
_PIXEL = "model.pixel_level_module.decoder."
_TRANS = "model.transformer_module."
# transformers' keys that mmdet has no counterpart for, unused at inference: taken from the freshly built model
HF_ONLY = (_SWIN + "swin.layernorm.weight", _SWIN + "swin.layernorm.bias", "criterion.empty_weight")
# mmdet's buffers that transformers recomputes itself (a fixed function of the window size): dropped
_REL_INDEX = re.compile(r"backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_index")

_BLK, _HBLK = r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.", _SWIN + r"swin.encoder.layers.\1.blocks.\2."
_ENC, _HENC = r"panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\.", _PIXEL + r"encoder.layers.\1."
_DEC, _HDEC = r"panoptic_head\.transformer_decoder\.layers\.(\d+)\.", _TRANS + r"decoder.layers.\1."
_RULES: list[tuple[re.Pattern, str | None]] = [(re.compile(p), r) for p, r in [
    (r"backbone\.patch_embed\.projection\.(.*)", _SWIN + r"swin.embeddings.patch_embeddings.projection.\1"),
    (r"backbone\.patch_embed\.norm\.(.*)", _SWIN + r"swin.embeddings.norm.\1"),
    (_BLK + r"norm1\.(.*)", _HBLK + r"layernorm_before.\3"),
    (_BLK + r"norm2\.(.*)", _HBLK + r"layernorm_after.\3"),
    (_BLK + r"attn\.w_msa\.proj\.(.*)",
     _HBLK + r"attention.o_proj.\3"),
    (_BLK + r"attn\.w_msa\.relative_position_bias_table",
     _HBLK + r"attention.relative_position_bias.relative_position_bias_table"),
    (_BLK + r"ffn\.layers\.0\.0\.(.*)", _HBLK + r"mlp.fc1.\3"),
    (_BLK + r"ffn\.layers\.1\.(.*)", _HBLK + r"mlp.fc2.\3"),
    (r"backbone\.norm(\d)\.(.*)", None),  # stage{i+1}: see convert_mmdet_state_dict
    (r"panoptic_head\.pixel_decoder\.input_convs\.(\d+)\.conv\.(.*)", _PIXEL + r"input_projections.\1.0.\2"),
    (r"panoptic_head\.pixel_decoder\.input_convs\.(\d+)\.gn\.(.*)", _PIXEL + r"input_projections.\1.1.\2"),
    (_ENC + r"attentions\.0\.(.*)", _HENC + r"self_attn.\2"),
    (_ENC + r"norms\.0\.(.*)", _HENC + r"self_attn_layer_norm.\2"),
    (_ENC + r"norms\.1\.(.*)", _HENC + r"final_layer_norm.\2"),
    (_ENC + r"ffns\.0\.layers\.0\.0\.(.*)", _HENC + r"fc1.\2"),
    (_ENC + r"ffns\.0\.layers\.1\.(.*)", _HENC + r"fc2.\2"),
    (r"panoptic_head\.pixel_decoder\.level_encoding\.weight", _PIXEL + "level_embed"),
    (r"panoptic_head\.pixel_decoder\.lateral_convs\.0\.conv\.(.*)", _PIXEL + r"adapter_1.0.\1"),
    (r"panoptic_head\.pixel_decoder\.lateral_convs\.0\.gn\.(.*)", _PIXEL + r"adapter_1.1.\1"),
    (r"panoptic_head\.pixel_decoder\.output_convs\.0\.conv\.(.*)", _PIXEL + r"layer_1.0.\1"),
    (r"panoptic_head\.pixel_decoder\.output_convs\.0\.gn\.(.*)", _PIXEL + r"layer_1.1.\1"),
    (r"panoptic_head\.pixel_decoder\.mask_feature\.(.*)", _PIXEL + r"mask_projection.\1"),
    (_DEC + r"attentions\.0\.attn\.(.*)",
     _HDEC + r"cross_attn.\2"),
    (_DEC + r"attentions\.1\.attn\.out_proj\.(.*)",
     _HDEC + r"self_attn.out_proj.\2"),
    (_DEC + r"norms\.0\.(.*)", _HDEC + r"cross_attn_layer_norm.\2"),
    (_DEC + r"norms\.1\.(.*)", _HDEC + r"self_attn_layer_norm.\2"),
    (_DEC + r"norms\.2\.(.*)", _HDEC + r"final_layer_norm.\2"),
    (_DEC + r"ffns\.0\.layers\.0\.0\.(.*)", _HDEC + r"fc1.\2"),
    (_DEC + r"ffns\.0\.layers\.1\.(.*)", _HDEC + r"fc2.\2"),
    (r"panoptic_head\.transformer_decoder\.post_norm\.(.*)", _TRANS + r"decoder.layernorm.\1"),
    (r"panoptic_head\.query_embed\.weight", _TRANS + "queries_embedder.weight"),
    (r"panoptic_head\.query_feat\.weight", _TRANS + "queries_features.weight"),
    (r"panoptic_head\.level_embed\.weight", _TRANS + "level_embed.weight"),
    (r"panoptic_head\.cls_embed\.(.*)", r"class_predictor.\1"),
    (r"panoptic_head\.mask_embed\.([024])\.(.*)", None),  # Sequential(Linear, ReLU, Linear, ReLU, Linear)
]]
_QKV = {  # fused q/k/v projections -> transformers' three
    re.compile(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.qkv\.(weight|bias)"):
        _SWIN + r"swin.encoder.layers.\1.blocks.\2.attention.{}_proj.\3",
    re.compile(r"panoptic_head\.transformer_decoder\.layers\.(\d+)\.attentions\.1\.attn\.in_proj_(weight|bias)"):
        _TRANS + r"decoder.layers.\1.self_attn.{}_proj.\2",
}
_MERGE = re.compile(r"backbone\.stages\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)")


def _unfold_to_concat(t, is_norm: bool):
    """Patch merging: mmdet's nn.Unfold orders the 4C inputs channel-major ((c, dy, dx)); Swin (and transformers)
    concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]. The inverse of mmdet's own
    `correct_unfold_reduction_order` (the permutation [0, 2, 1, 3] is its own inverse)."""
    if is_norm:
        c = t.shape[0] // 4
        return t.reshape(c, 4).transpose(0, 1)[[0, 2, 1, 3]].reshape(4 * c)
    out, c = t.shape[0], t.shape[1] // 4
    return t.reshape(out, c, 4).transpose(1, 2)[:, [0, 2, 1, 3]].reshape(out, 4 * c)


def convert_mmdet_state_dict(sd: dict, where: str = "checkpoint") -> dict:
    """mmdet 2.x Mask2Former (Swin) keys -> `Mask2FormerForUniversalSegmentation` keys, tensors unchanged except
    the fused q/k/v splits and the patch-merging order. An mmdet key no rule knows is an `InputError` naming
    `where` and the keys (the checkpoint is not GenEval's Mask2Former)."""
    import torch

    out, unknown = {}, []
    for key, t in sd.items():
        if _REL_INDEX.fullmatch(key):
            continue
        m = _MERGE.fullmatch(key)
        if m:
            s, part, kind = m.groups()
            t = _unfold_to_concat(t, part == "norm") if kind == "weight" or part == "norm" else t
            out[f"{_SWIN}swin.encoder.layers.{s}.downsample.{part}.{kind}"] = t
            continue
        for pattern, target in _QKV.items():
            m = pattern.fullmatch(key)
            if m:
                for name, part in zip("qkv", torch.chunk(t, 3, dim=0)):
                    out[m.expand(target.replace("{}", name))] = part.clone()
                break
        else:
            for pattern, target in _RULES:
                m = pattern.fullmatch(key)
                if not m:
                    continue
                if key.startswith("backbone.norm"):
                    out[f"{_SWIN}hidden_states_norms.stage{int(m.group(1)) + 1}.{m.group(2)}"] = t
                elif key.startswith("panoptic_head.mask_embed"):
                    i, rest = m.groups()
                    out[f"{_TRANS}decoder.mask_predictor.mask_embedder.{int(i) // 2}.0.{rest}"] = t
                else:
                    out[m.expand(target)] = t
                break
            else:
                unknown.append(key)
    if unknown:
        raise InputError(f"{where}: {len(unknown)} key(s) that GenEval's Mask2Former (mmdet 2.x, Swin) does not "
                         f"have: {', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}; give "
                         f"{CHECKPOINT} from GenEval's evaluation/download_models.sh")
    return out


def load_converted(model, sd: dict, where: str) -> None:
    """Load converted weights into `model` strictly (`HF_ONLY` excepted): `InputError` naming `where` and the
    missing and unexpected keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd) - set(HF_ONLY))
    extra = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or extra or shapes:
        def few(keys):
            return ", ".join(keys[:4]) + (f" ... ({len(keys)} in all)" if len(keys) > 4 else "")
        parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(extra)}" if extra else "",
                 f"of another shape {few([f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}' for k in shapes])}"
                 if shapes else ""]
        raise InputError(f"{where} does not fit GenEval's Mask2Former Swin-S: " + "; ".join(p for p in parts if p)
                         + f"; give {CHECKPOINT} from GenEval's evaluation/download_models.sh")
    model.load_state_dict({**{k: own[k] for k in HF_ONLY if k in own}, **sd}, strict=True)


def find_checkpoint(model_path: str | os.PathLike | None) -> Path:
    """The checkpoint file: `model_path` itself, or `CHECKPOINT` inside it (GenEval's --model-path)."""
    if model_path is None:
        raise InputError(f"--detector mask2former needs GenEval's detector weights: --model-path <{CHECKPOINT} or "
                         "the folder holding it> (GenEval's evaluation/download_models.sh fetches it)")
    p = Path(model_path).expanduser()
    if p.is_dir():
        # GenEval's download script renames the model zoo's file; the zoo's own name carries a date and a hash
        zoo = sorted(p.glob(CHECKPOINT.removesuffix(".pth") + "_*.pth"))
        found = p / CHECKPOINT if (p / CHECKPOINT).is_file() or not zoo else zoo[0]
        if not found.is_file():
            there = sorted(x.name for x in p.glob("*.pth"))
            raise MissingFileError(f"--model-path: {p} holds no {CHECKPOINT} (nor the model zoo's "
                                   f"{CHECKPOINT.removesuffix('.pth')}_<date>-<hash>.pth)"
                                   + (f"; its .pth files: {', '.join(there[:5])}" if there else ""))
        return found
    if not p.is_file():
        raise MissingFileError(f"--model-path: {p} does not exist; give {CHECKPOINT} or the folder holding it")
    return p


def build_mask2former(checkpoint: str | os.PathLike | dict, size: Mask2FormerSize = Mask2FormerSize(),
                      where: str | None = None):
    """transformers' Mask2Former with the weights of an mmdet checkpoint (a path, read with weights_only=True, or
    an mmdet state dict), in eval mode."""
    from transformers import Mask2FormerForUniversalSegmentation

    from ..core.checkpoint import read_state_dict

    if isinstance(checkpoint, dict):
        sd, where = checkpoint, where or "state dict"
    else:
        where = where or str(checkpoint)
        # the project's reader: weights_only, one classified line for an empty, truncated, HTML or pickled file,
        # mmcv's {'meta', 'state_dict'} wrapper, a DataParallel `module.` prefix
        sd = read_state_dict(checkpoint, nested_key="state_dict")
    model = Mask2FormerForUniversalSegmentation(size.hf_config())
    load_converted(model, convert_mmdet_state_dict(sd, where), where)
    return model.eval()


# ----------------------------------------------------------------------------------------------------
# mmdet's test pipeline and instance post-processing


def resized_shape(h: int, w: int, scale: tuple[int, int] = SCALE) -> tuple[int, int]:
    """mmcv's `rescale_size` for keep_ratio resizing: the largest size within `scale` (long, short edge)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def preprocess(image: np.ndarray):
    """uint8 [H, W, 3] RGB -> (float [1, 3, Hp, Wp], (h, w) resized): padded with grey 128 to a multiple of 32, then
    normalised, in the config's order (so the padding is (128 - mean) / std, not 0).
    Resizing is bilinear with half-pixel centres, rounded back to uint8 as cv2 returns it (cv2 computes in
    fixed point: values may differ by one grey level)."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[:2]
    nh, nw = resized_shape(h, w)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False).round().clamp_(0, 255)
    ph, pw = -(-nh // SIZE_DIVISOR) * SIZE_DIVISOR, -(-nw // SIZE_DIVISOR) * SIZE_DIVISOR
    x = F.pad(x, (0, pw - nw, 0, ph - nh), value=PAD_VALUE)  # the config pads (with 128) before it normalises
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1), (nh, nw)


def mask_to_box(masks):
    """mmdet's `mask2bbox`: [N, H, W] bool -> [N, 4] float32 (x0, y0, x1 + 1, y1 + 1); zeros for an empty mask."""
    import torch

    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    x_any, y_any = masks.any(dim=1), masks.any(dim=2)
    for i in range(masks.shape[0]):
        x, y = torch.where(x_any[i])[0], torch.where(y_any[i])[0]
        if len(x) and len(y):
            boxes[i] = torch.tensor([x[0], y[0], x[-1] + 1, y[-1] + 1], dtype=torch.float32)
    return boxes


def postprocess(class_logits, mask_logits, input_shape: tuple[int, int], resized: tuple[int, int],
                original: tuple[int, int], max_per_image: int = MAX_PER_IMAGE):
    """mmdet 2.x `Mask2FormerHead.simple_test` + `MaskFormerFusionHead.instance_postprocess` for one image:
    class_logits [Q, C+1], mask_logits [Q, h/4, w/4] -> (labels [K], scores [K], boxes [K, 4], masks [K, H, W])."""
    import torch
    import torch.nn.functional as F

    masks = F.interpolate(mask_logits[None], size=input_shape, mode="bilinear", align_corners=False)[0]
    masks = masks[:, : resized[0], : resized[1]]
    masks = F.interpolate(masks[:, None], size=original, mode="bilinear", align_corners=False)[:, 0]
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    scores = F.softmax(class_logits, dim=-1)[:, :-1]
    labels = torch.arange(num_classes).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    top_scores, top = scores.flatten(0, 1).topk(min(max_per_image, scores.numel()), sorted=False)
    labels, masks = labels[top], masks[top // num_classes]
    binary = (masks > 0).float()
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    binary = binary.bool()
    return labels, top_scores * mask_scores, mask_to_box(binary), binary


# ----------------------------------------------------------------------------------------------------
# colour: CLIP zero-shot over GenEval's ten colours


class ColorClassifier:
    """GenEval's colour classifier: open_clip ViT-L-14 ('openai' weights from a local file); per class, text
    embeddings of the three templates averaged over the ten colours (clip_benchmark's `zero_shot_classifier`);
    each object is its box crop of the image composited on #999 through its mask (`ImageCrops`)."""

    def __init__(self, weights: str | os.PathLike, device: str = "cpu", arch: str = "ViT-L-14"):
        import open_clip

        from rewards.open_clip_loader import load_open_clip

        # GenEval builds it with open_clip's 'openai' tag, which means QuickGELU (OpenAI trained with it); a bare
        # weights file would get ViT-L-14's config, GELU: other embeddings, other colour verdicts, no error
        bundle = load_open_clip(arch, str(weights), device=device, quick_gelu=True)
        self.model, self.tokenize, self.device = bundle.model.eval(), bundle.tokenize, device
        size = self.model.visual.image_size
        self.transform = open_clip.image_transform(size[0] if isinstance(size, tuple) else size, is_train=False)
        self._text: dict[str, object] = {}

    def _classifier(self, classname: str):
        import torch
        import torch.nn.functional as F

        if classname not in self._text:
            weights = []
            with torch.no_grad(), self._autocast():
                for c in GENEVAL_COLORS:
                    texts = [t.format(c=c, cls=classname) for t in COLOR_TEMPLATES]
                    emb = F.normalize(self.model.encode_text(self.tokenize(texts).to(self.device)), dim=-1).mean(0)
                    weights.append(emb / emb.norm())
            self._text[classname] = torch.stack(weights, dim=1)
        return self._text[classname]

    def _autocast(self):
        import contextlib

        import torch

        return torch.autocast("cuda") if str(self.device).startswith("cuda") else contextlib.nullcontext()

    def __call__(self, image: np.ndarray, objects: list[tuple[tuple, np.ndarray]], classname: str) -> list[str]:
        import torch
        import torch.nn.functional as F
        from PIL import Image

        pil = Image.fromarray(image)
        blank = Image.new("RGB", pil.size, color="#999")
        crops = [Image.composite(pil, blank, Image.fromarray(mask)).crop(tuple(box[:4])) for box, mask in objects]
        batch = torch.stack([self.transform(c) for c in crops]).to(self.device)
        with torch.no_grad(), self._autocast():
            feats = F.normalize(self.model.encode_image(batch), dim=-1)
            logits = 100.0 * feats @ self._classifier(classname)
        return [GENEVAL_COLORS[i] for i in logits.argmax(1).tolist()]


# ----------------------------------------------------------------------------------------------------
# the evaluator


@register_evaluator("mask2former")
class Mask2FormerEvaluator(Evaluator):
    """GenEval's detector: Mask2Former detections, GenEval's filter, CLIP colours for colour prompts.

    Options (`ttsvar geneval score --options`): GenEval's threshold, counting_threshold, max_objects,
    max_overlap, position_threshold; `model_path` (the checkpoint or its folder), `clip_weights`, `device`.
    """

    classes = COCO_CLASSES

    def __init__(self, model_path: str | None = None, clip_weights: str | None = None, device: str | None = None,
                 threshold: float = 0.3, counting_threshold: float = 0.9, max_objects: int = 16,
                 max_overlap: float = 1.0, position_threshold: float = POSITION_THRESHOLD):
        import torch

        self.filter = FilterOptions(threshold, counting_threshold, max_objects, max_overlap)
        self.position_threshold = position_threshold
        ckpt = find_checkpoint(model_path)
        if clip_weights is None:
            raise InputError("--detector mask2former needs the CLIP colour classifier's weights: --clip-weights "
                             "<open_clip ViT-L-14 'openai' weights file>")
        clip = Path(clip_weights).expanduser()
        if not clip.is_file():
            raise MissingFileError(f"--clip-weights: {clip_weights} " + ("is a folder; give the weights file in it"
                                                                         if clip.is_dir() else "does not exist"))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = build_mask2former(ckpt).to(self.device)
        self.colors_of = ColorClassifier(Path(clip_weights).expanduser(), self.device)
        self._masks: dict[int, np.ndarray] = {}

    def raw_detections(self, image: np.ndarray) -> list[tuple[Detection, np.ndarray]]:
        """Every detection of the post-processing (up to 100) with its mask [H, W] bool, before GenEval's filter."""
        import torch

        x, resized = preprocess(image)
        with torch.inference_mode():
            out = self.model(pixel_values=x.to(self.device))
        labels, scores, boxes, masks = postprocess(out.class_queries_logits[0].float().cpu(),
                                                   out.masks_queries_logits[0].float().cpu(), tuple(x.shape[-2:]),
                                                   resized, image.shape[:2])
        return [(Detection(COCO_CLASSES[int(lab)], tuple(float(v) for v in box), float(s)), m.numpy())
                for lab, s, box, m in zip(labels, scores, boxes, masks)]

    def detect(self, image: np.ndarray, metadata: dict) -> list[Detection]:
        # by class in COCO order (stable: the post-processing's order within a class), as mmdet's bbox2result
        # hands them to GenEval, so `details` in results.jsonl lists the classes in GenEval's order
        raw = sorted(self.raw_detections(image), key=lambda dm: _CLASS_INDEX[dm[0].cls])
        masks = {id(d): m for d, m in raw}
        kept = filter_detections([d for d, _ in raw], metadata, self.filter)
        for req in metadata.get("include", []):
            if "color" not in req:
                continue
            found = [d for d in kept if d.cls == req["class"]][: req["count"]]
            if found and any(d.color is None for d in found):
                colors = self.colors_of(image, [(d.box, masks[id(d)]) for d in found], req["class"])
                for d, c in zip(found, colors):
                    d.color = c
        return kept
