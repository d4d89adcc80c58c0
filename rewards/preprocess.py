"""Batched tensor preprocessing for rewards: resize, crop or pad, normalise.

Official reward pipelines start from PIL images (uint8) and use torchvision's PIL transforms. The
search hands rewards float tensors in [0,1] instead, so rewards apply the same geometry here on
tensors: torchvision's resize (antialiased bicubic, which approximates PIL's bicubic filter) and
center crop, with the result clamped to [0,1] as PIL's uint8 output is. Images already at the target
size are not resampled. Remaining differences to the PIL path are the missing uint8 quantisation and
the small gap between the two bicubic kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
    "area": None,  # area averaging when shrinking, bilinear when enlarging (F.interpolate)
}
RESIZE_MODES = ("shortest", "longest", "squash")


@dataclass(frozen=True)
class ImageTransform:
    """Geometry and normalisation a reward model expects.

    ``resize_mode``: ``'shortest'`` resizes the short side to ``size`` and center-crops (CLIP, BLIP);
    ``'longest'`` resizes the long side to ``size`` and pads the rest with ``fill`` (HPS v2);
    ``'squash'`` resizes both sides to ``size``. ``interpolation``: ``'bicubic'``, ``'bilinear'``,
    ``'nearest'`` (torchvision, antialiased) or ``'area'`` (area averaging when shrinking, bilinear when
    enlarging).
    """

    size: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    fill: float = 0.0

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode={self.resize_mode!r}; use one of {RESIZE_MODES}")
        if self.interpolation not in _INTERP:
            raise ValueError(f"interpolation={self.interpolation!r}; use one of {sorted(_INTERP)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean/std need 3 channels, got {self.mean} / {self.std}")

    def _resize(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == hw:
            return x
        if self.interpolation == "area":
            if x.shape[-2] >= hw[0] and x.shape[-1] >= hw[1]:
                return F.interpolate(x, size=hw, mode="area")
            return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
        mode = _INTERP[self.interpolation]
        x = TF.resize(x, list(hw), interpolation=mode, antialias=mode != InterpolationMode.NEAREST)
        return x.clamp(0.0, 1.0)

    def __call__(
        self, images: Tensor, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``[B,3,H,W]`` in [0,1] -> ``[B,3,size,size]`` normalised, on ``device`` in ``dtype``."""
        x = images.to(device=device, dtype=torch.float32)
        H, W = x.shape[-2:]
        s = self.size
        if self.resize_mode == "squash":
            x = self._resize(x, (s, s))
        elif self.resize_mode == "shortest":
            # torchvision Resize(int) semantics: short side -> s, long side truncated
            short, long = (H, W) if H <= W else (W, H)
            new_long = int(s * long / short)
            x = self._resize(x, (s, new_long) if H <= W else (new_long, s))
            x = TF.center_crop(x, [s, s])
        else:
            scale = s / max(H, W)
            h, w = round(H * scale), round(W * scale)
            x = self._resize(x, (h, w))
            ph, pw = s - h, s - w
            if ph or pw:
                x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=self.fill)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)
