"""SwinBottomUp: timm's Swin Transformer as a detectron2 bottom-up (paper Table 6, docs/DESIGN.md, "The recipe").

timm (1.0.x) builds ``swin_tiny_patch4_window7_224`` with ``features_only=True`` for any input
size only with ``strict_img_size=False``; it then returns NHWC maps (96/192/384/768 channels,
strides 4..32) and needs the input divisible by the patch size (4), pads windows itself and
pads odd sizes before each patch merging. This wrapper pads the image at the bottom/right to a
multiple of 32 (so every stage has even sizes, as in detectron2's padded batches), returns
NCHW maps named ``res2..res5`` and crops them back to ``ceil(H / stride)`` x ``ceil(W / stride)``,
the sizes detectron2's ResNet gives, so any input size works (e.g. 97x131).

``img_size`` only sets the resolution timm plans its windows for: with the default 1024 every
stage is larger than the 7x7 window, so every other block uses shifted windows (as Swin's
detection recipe). timm's 224 would turn the shift off in the last stage. No weights are ever
downloaded (``pretrained=False``); load an ImageNet checkpoint through ``MODEL.WEIGHTS``.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone
from torch import Tensor

__all__ = ["SwinBottomUp"]

_STAGE_NAMES = ("res2", "res3", "res4", "res5")


class SwinBottomUp(Backbone):
    """Swin Transformer (timm) giving ``res2..res5``.

    Args:
        name (str): a timm Swin model name, e.g. "swin_tiny_patch4_window7_224".
        out_features (list[str]): subset of ``res2..res5``.
        drop_path_rate (float): stochastic depth of timm's blocks.
        img_size (int or (int, int)): the size timm plans its windows for (see module doc).
        pad_to (int): inputs are padded at the bottom/right to a multiple of this.
    """

    def __init__(
        self,
        name: str = "swin_tiny_patch4_window7_224",
        out_features: Sequence[str] = _STAGE_NAMES,
        *,
        drop_path_rate: float = 0.0,
        img_size: Union[int, Tuple[int, int]] = 1024,
        pad_to: int = 32,
    ):
        super().__init__()
        import timm

        out_features = list(out_features)
        for f in out_features:
            if f not in _STAGE_NAMES:
                raise ValueError(
                    "unknown Swin out_feature {!r}; valid: {}".format(f, list(_STAGE_NAMES))
                )
        if not out_features:
            raise ValueError("out_features is empty; valid: {}".format(list(_STAGE_NAMES)))
        if not name.startswith("swin"):
            raise ValueError(
                "SwinBottomUp wraps timm Swin models; got {!r} (e.g. "
                "'swin_tiny_patch4_window7_224')".format(name)
            )
        indices = tuple(_STAGE_NAMES.index(f) for f in out_features)
        self.model = timm.create_model(
            name,
            pretrained=False,
            features_only=True,
            out_indices=indices,
            strict_img_size=False,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
        )
        info = self.model.feature_info
        channels, strides = info.channels(), info.reduction()
        if pad_to % max(strides) != 0:
            raise ValueError(
                "pad_to={} must be a multiple of the largest stride {}".format(pad_to, max(strides))
            )
        self.pad_to = pad_to
        self._out_features = out_features
        self._out_feature_channels = dict(zip(out_features, channels))
        self._out_feature_strides = dict(zip(out_features, strides))
        self.name = name

    @property
    def size_divisibility(self) -> int:
        return self.pad_to

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x: Tensor of shape (N, 3, H, W), any H, W.

        Returns:
            dict[str, Tensor]: ``res<k>`` -> Tensor of shape (N, C_k, ceil(H / s_k), ceil(W / s_k)).
        """
        h, w = int(x.shape[-2]), int(x.shape[-1])
        pad_h = (self.pad_to - h % self.pad_to) % self.pad_to
        pad_w = (self.pad_to - w % self.pad_to) % self.pad_to
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        outs = self.model(x)
        result = {}
        for name, feat in zip(self._out_features, outs):
            s = self._out_feature_strides[name]
            feat = feat.permute(0, 3, 1, 2)  # (N, H/s, W/s, C) -> (N, C, H/s, W/s)
            result[name] = feat[:, :, : -(-h // s), : -(-w // s)].contiguous()
        return result

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
            for f in self._out_features
        }
