"""The FID Inception-v3: the network, preprocessing and weights file of the FID protocols, as a feature space.

The architecture is torchvision's Inception-v3 (1008 classes, no auxiliary head) with the blocks patched as the
TensorFlow 2015-12-05 graph computes them (pytorch-fid's FIDInceptionA/C/E: average pools that ignore padding, a
max pool in the last block), so pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` loads into it strictly under
its own key names. `forward` takes uint8 images of any size and returns the 2048-D pool3 features (FID, precision/
recall in Inception space) and the 1008-D logits without the fc bias, which is what torch-fidelity's Inception
Score (and the original TensorFlow IS code) feeds its softmax. Two preprocessing protocols, as two kinds:
"inception" is pytorch-fid's (PyTorch's bilinear resize of x/255, then 2x-1), "inception-tf1" the TensorFlow graph's
that torch-fidelity reproduces and EDM's fid.py (DMD2's FIDs) runs (TensorFlow 1's resize of the 0..255 values, then
(x-128)/128); `PROTOCOLS` holds the sentence each report prints, saying where they differ.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .weights import check_state_dict, read_state_dict

EDM_NOTE = ("EDM's fid.py (the source of DMD2's published FIDs) runs the same weights through NVlabs' "
            "inception-2015-12-05.pkl, a port of the TensorFlow graph with its own resize")
PROTOCOLS = {  # kind -> the sentence a report prints beside its numbers
    "inception": "pytorch-fid's protocol: uint8/255, bilinear resize to 299x299 (PyTorch, align_corners=False, no "
                 "antialias), then 2x-1, into the FID Inception-v3 with the 2015-12-05 TensorFlow weights; features "
                 "are the 2048-D pool3, logits the 1008-D fc without its bias as torch-fidelity's Inception Score "
                 f"uses them. {EDM_NOTE}, which samples the image as TensorFlow 1 did (no half-pixel offset) and "
                 "normalises (x-128)/128, so its features, and FIDs, differ slightly from these: compare an FID only "
                 "with FIDs of the same protocol.",
    "inception-tf1": "The TensorFlow FID protocol as torch-fidelity reproduces it: uint8 values resized to 299x299 "
                     "the way TensorFlow 1's bilinear resize does (no half-pixel offset), then (x-128)/128, into the "
                     "FID Inception-v3 with the 2015-12-05 weights; features are the 2048-D pool3, logits the 1008-D "
                     f"fc without its bias (the Inception Score's). {EDM_NOTE}, which emulates this same resize "
                     "and normalisation, so these are the closest to DMD2's published FIDs (checked against "
                     "torch-fidelity, not against that .pkl, which is not available offline); pytorch-fid's resize "
                     "samples half a pixel apart, and its FIDs differ slightly.",
}

#----------------------------------------------------------------------------
# Convolution without bias, then batch norm (eps 1e-3 as TensorFlow), then ReLU.

class BasicConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))

#----------------------------------------------------------------------------
# Pooling branches: TensorFlow's 3x3 average pool leaves the zero padding out of the mean.

def avg_pool_tf(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def max_pool_same(x):
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)

#----------------------------------------------------------------------------
# Mixed_5b..5d: 1x1, 5x5, double 3x3 and pooled branches at 35x35.

class InceptionA(nn.Module):
    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(avg_pool_tf(x)),
        ], dim=1)

#----------------------------------------------------------------------------
# Mixed_6a: reduction 35x35 -> 17x17.

class InceptionB(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)

#----------------------------------------------------------------------------
# Mixed_6b..6e: factorised 7x7 branches at 17x17.

class InceptionC(nn.Module):
    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(avg_pool_tf(x))], dim=1)

#----------------------------------------------------------------------------
# Mixed_7a: reduction 17x17 -> 8x8.

class InceptionD(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

#----------------------------------------------------------------------------
# Mixed_7b, 7c: split 1x3/3x1 branches at 8x8; the graph's last block pools with max, not average
# (`max_pool`: an oddity of the 2015-12-05 graph that FID inherits).

class InceptionE(nn.Module):
    def __init__(self, in_channels, max_pool=False):
        super().__init__()
        self.pool = max_pool_same if max_pool else avg_pool_tf
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
            self.branch_pool(self.pool(x)),
        ], dim=1)

#----------------------------------------------------------------------------
# TensorFlow 1's bilinear resize (align_corners=False, half_pixel_centers=False): output pixel i samples the input
# at i * in/out computed in float32, lerping along x then y as TensorFlow's kernel does.

def resize_like_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    def taps(n_in):
        pos = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.float()
    (y0, y1, dy), (x0, x1, dx) = taps(x.shape[2]), taps(x.shape[3])
    top, bottom = x[:, :, y0], x[:, :, y1]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * dx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * dx
    return top + (bottom - top) * dy[:, None]

#----------------------------------------------------------------------------
# The FID Inception-v3 as an encoder: uint8 images in, (2048-D pool3 features, 1008-D logits) out.
# `kind`: "inception" preprocesses as pytorch-fid, "inception-tf1" as TensorFlow's graph (torch-fidelity).
# `logits_bias`: add the fc bias (the classifier's logits) instead of the bias-free ones the Inception Score uses.

class FIDInceptionV3(nn.Module):
    feature_dim = 2048
    num_classes = 1008
    class_order = ""        # TensorFlow's 1008 outputs are not the ImageNet-1k order
    resolution = 299

    def __init__(self, kind="inception", logits_bias=False):
        super().__init__()
        if kind not in PROTOCOLS:
            raise ValueError(f"unknown Inception protocol {kind!r}; one of {', '.join(PROTOCOLS)}")
        self.kind, self.protocol = kind, PROTOCOLS[kind]
        self.logits_bias = logits_bias
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 in [-1, 1] at 299x299, in the protocol's order of operations (pytorch-fid:
        ToTensor's /255, then its model's resize and 2x-1), so the rounding matches too."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if self.kind == "inception-tf1":
            return (resize_like_tf1(images.to(torch.float32), self.resolution) - 128) / 128
        x = images.to(torch.float32) / 255
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        features = x.mean(dim=(2, 3), dtype=torch.float32)   # pool3: the global average
        logits = features @ self.fc.weight.T
        if self.logits_bias:
            logits = logits + self.fc.bias
        return features.float(), logits.float()

#----------------------------------------------------------------------------
# Loader: the user's file (pytorch-fid's .pth, or the same tensors as safetensors), checked strictly, then loaded.

def load_inception(kind: str, weights: Path, head: Path | None = None, device="cpu") -> FIDInceptionV3:
    """The FID Inception-v3 of protocol `kind` ("inception": pytorch-fid's; "inception-tf1": TensorFlow's, as
    torch-fidelity reproduces it) with `weights` loaded strictly, in eval mode on `device`; a one-line UserError naming
    the file for anything else (a DINOv2 file, a truncated or damaged file, wrong shapes, NaN, a pickle)."""
    if kind not in PROTOCOLS:
        raise UserError(f"{weights}: encoder kind {kind!r} is not the FID Inception-v3 ({' or '.join(PROTOCOLS)})")
    if head is not None:
        raise UserError(f"{head}: the FID Inception-v3 takes no separate head file (its fc is in {weights})")
    what = "FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"
    state = read_state_dict(Path(weights), what)
    with torch.device("meta"):   # shapes only: the file's tensors become the parameters, no random init to pay for
        net = FIDInceptionV3(kind)
    expected = net.state_dict()
    for k in expected:
        # BatchNorm's step counter (unused in eval) is absent from files saved before PyTorch 0.4.1; torch's own
        # strict load fills it in for such files, and so do we.
        if k.endswith(".num_batches_tracked") and k not in state and k[:-19] + "running_var" in state:
            state[k] = torch.zeros((), dtype=torch.long)
    check_state_dict(state, {k: tuple(v.shape) for k, v in expected.items()}, weights, what)
    state = {k: v.to(expected[k].dtype).contiguous() for k, v in state.items()}   # a float16 copy computes in float32
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval().requires_grad_(False).to(device)
