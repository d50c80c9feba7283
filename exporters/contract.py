"""The preprocessing contract: how to turn a raw image into the tensor an artifact expects.

A device team reimplements preprocessing in its own language and runtime; every
detail it has to guess costs accuracy silently (a loader that guessed 0..255
pixels got 13.8 % top-1 on the demo model, one that padded top-left instead of
centred lost 0.8 points). So every artifact carries the whole recipe, as plain
data, in its ONNX metadata (`preprocess`) and in a TensorRT engine's sidecar:

    raw uint8 image, grey [H, W] or RGB [H, W, 3] (`raw_channels`: "grey" or "RGB")
    1. grey -> 3 channels by repeating the grey value (`channel_order`)
    2. `pad`: zero border to pad.size, centred (floor of the odd pixel on the left/top)
    2b. `crop` (when not null, and the image is not already input_size): keep the centred
       square of side round(crop.ratio x shorter side), the ImageNet "resize 256, crop 224"
       done as one crop then one resize (`data.eval_crop_ratio`)
    3. `resize` to input_size x input_size when the size differs: bilinear, antialiased,
       aspect ratio not kept, rounded back to uint8
    4. x = (pixel / `pixel_scale`[1] - mean[c]) / std[c], float32, `mean_std_scale` "0..1"
    5. layout NCHW, channels in `channel_order`

`preprocess` below is that recipe written out, reading nothing but the contract, so
`richkd-deploy verify` checks the contract itself, not the training code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from richkd_deploy.data import resize_uint8
from richkd_deploy.errors import ArtifactError

CONTRACT_FORMAT = "richkd-deploy/preprocess/1"

# dataset -> (raw image channels, raw side, pad target) for the datasets whose stored
# images are not what the model sees
_GREY_PADDED = {"fashion-mnist": (28, 32)}


def build_contract(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The contract for a student checkpoint dict (`student.pt` minus weights)."""
    recipe = payload.get("recipe") if isinstance(payload.get("recipe"), Mapping) else {}
    dataset = str((recipe.get("data") or {}).get("dataset") or payload.get("dataset") or "")
    size = int(payload["input_size"])
    grey = _GREY_PADDED.get(dataset.replace("_", "-").lower())
    crop_ratio = (recipe.get("data") or {}).get("eval_crop_ratio")
    contract: dict[str, Any] = {
        "format": CONTRACT_FORMAT,
        "dataset": dataset or None,
        "layout": "NCHW",
        "dtype": "float32",
        "input_size": [size, size],
        "raw_channels": "grey" if grey else "RGB",
        "channel_order": "RGB (grey repeated into R, G and B)" if grey else "RGB",
        "pad": {"size": [grey[1], grey[1]], "value": 0, "align": "centre", "raw_size": [grey[0], grey[0]]}
        if grey else None,
        "crop": {"ratio": float(crop_ratio), "align": "centre", "shape": "square of ratio x shorter side",
                 "when": "size differs from input_size"} if crop_ratio is not None else None,
        "resize": {"when": "size differs from input_size", "method": "bilinear", "antialias": True,
                   "keep_aspect": False, "round_to": "uint8"},
        "pixel_scale": [0, 255],
        "mean_std_scale": "0..1",
        "mean": [float(v) for v in payload.get("mean", [])],
        "std": [float(v) for v in payload.get("std", [])],
        "formula": "x[c] = (pixel[c] / 255 - mean[c]) / std[c]",
        "classes": list(payload.get("classes", [])),
    }
    return contract


def preprocess(raw: np.ndarray, contract: Mapping[str, Any]) -> np.ndarray:
    """Raw uint8 images [N, H, W] (grey) or [N, H, W, 3] (RGB) -> float32 NCHW input,
    following only `contract`."""
    if contract.get("format") != CONTRACT_FORMAT:
        raise ArtifactError(f"unknown preprocessing contract {contract.get('format')!r}; expected {CONTRACT_FORMAT}")
    x = np.asarray(raw)
    if x.dtype != np.uint8:
        raise ArtifactError(f"raw images must be uint8, got {x.dtype}")
    if contract["raw_channels"] == "grey":
        if x.ndim == 4 and x.shape[3] == 1:
            x = x[..., 0]
        if x.ndim != 3:
            raise ArtifactError(f"grey raw images must be [N, H, W], got {list(x.shape)}")
        x = np.repeat(x[..., None], 3, axis=3)
    elif x.ndim != 4 or x.shape[3] != 3:
        raise ArtifactError(f"RGB raw images must be [N, H, W, 3], got {list(x.shape)}")
    pad = contract.get("pad")
    if pad:
        th, tw = pad["size"]
        n, h, w, c = x.shape
        top, left = (th - h) // 2, (tw - w) // 2
        out = np.full((n, th, tw, c), pad.get("value", 0), dtype=np.uint8)
        out[:, top:top + h, left:left + w] = x
        x = out
    size = tuple(contract["input_size"])
    crop = contract.get("crop")
    if crop and tuple(x.shape[1:3]) != size:
        h, w = x.shape[1:3]
        side = max(1, round(min(h, w) * float(crop["ratio"])))
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, top:top + side, left:left + side]
    chw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if tuple(chw.shape[-2:]) != size:
        chw = resize_uint8(chw, size)
    lo, hi = contract["pixel_scale"]
    scaled = (chw.numpy().astype(np.float64) - lo) / (hi - lo)
    mean = np.asarray(contract["mean"], np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(contract["std"], np.float64).reshape(1, -1, 1, 1)
    return ((scaled - mean) / std).astype(np.float32)


def raw_from_dataset(dataset: Any, indices: np.ndarray, contract: Mapping[str, Any]) -> np.ndarray | None:
    """The raw uint8 images of `indices` as the contract's first step expects them, or
    None when the dataset cannot give uint8 images (arrays already normalised).

    Fashion-MNIST is stored padded to 32 x 32 RGB; its raw 28 x 28 grey image is the
    centre crop of one channel (the padding is zero and the channels are equal).
    Folder images of different sizes are taken resized to input_size (a golden file
    holds one array), so their resize step is the identity.
    """
    uint8_batch = getattr(dataset, "uint8_batch", None)
    if uint8_batch is None:
        return None
    sizes = {getattr(dataset, "image_size", None)}
    batch = uint8_batch(indices, size=None if None not in sizes else tuple(contract["input_size"]))
    x = batch.numpy().transpose(0, 2, 3, 1)  # NHWC
    pad = contract.get("pad")
    if contract["raw_channels"] == "grey":
        x = x[..., 0]
        if pad:
            rh, rw = pad["raw_size"]
            top, left = (x.shape[1] - rh) // 2, (x.shape[2] - rw) // 2
            x = x[:, top:top + rh, left:left + rw]
    return np.ascontiguousarray(x)
