"""The demo classifier: a small CNN trained on real demo images, the demo report's second feature space.

The demo has no ImageNet and no Inception weights, so it ships its own classifier (data/demo/classifier.safetensors,
trained by `python -m dmd2report.demo.classifier train`, see data/demo/README.md). Three 3x3 conv stages with batch
norm, ReLU and 2x max pooling, then global mean and max pooling concatenated: that vector (8 x width, 256-D at the
shipped width 32) is the feature space, and a linear layer on it gives the 12 logits in the demo's class order. It
takes uint8 images as every encoder does and does its own preprocessing: resized to 32x32 when they are another size,
then scaled to [-1, 1] as the demo generator's pixels are.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from .weights import check_state_dict, read_state_dict

KIND = "demo-classifier"
RESOLUTION = 32
NUM_CLASSES = 12

# ---------------------------------------------------------------------------------------------
# The network.

class DemoClassifier(torch.nn.Module):
    """uint8 (N, 3, H, W) -> (features (N, 8*width), logits (N, 12)); pooling makes it tolerant of position and size."""

    kind = KIND
    feature_dim = 256  # the shipped width's; an instance holds its own width's
    num_classes = NUM_CLASSES
    class_order = "demo"
    protocol = ("demo classifier: images resized to 32x32 by antialiased bilinear interpolation (PIL's bilinear "
                "filter, as torch's antialias=True computes it) when they are another size, pixels scaled to "
                "[-1, 1] as x / 127.5 - 1; features are the global mean+max pool of its last conv stage (256-D in "
                "the shipped file); a space of this package's own, comparable only between reports using the same "
                "classifier file, not with FID or FD_DINOv2")

    def __init__(self, width: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width]
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:])])
        self.norms = torch.nn.ModuleList([torch.nn.BatchNorm2d(c) for c in chans[1:]])
        self.head = torch.nn.Linear(8 * width, num_classes)
        self.feature_dim = 8 * width
        self.num_classes = num_classes

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 (N, 3, 32, 32) in [-1, 1]."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.float()
        if x.shape[2:] != (RESOLUTION, RESOLUTION):
            # Resize in [0, 255] and before scaling, as PIL would resize the uint8 image (without re-rounding).
            x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False, antialias=True)
        return x / 127.5 - 1

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed float input -> (features, logits); what training calls."""
        for conv, norm in zip(self.convs, self.norms):
            x = F.max_pool2d(F.relu(norm(conv(x))), 2)
        features = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return features, self.head(features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels_last (the loader stores the weights so too): twice the CPU throughput of NCHW for these convs.
        features, logits = self.embed(self.preprocess(images).contiguous(memory_format=torch.channels_last))
        return features.float(), logits.float()

    @torch.no_grad()
    def predict(self, images, batch: int = 512):
        """Class ids (numpy int64) of uint8 images, (N, 3, H, W) tensor or numpy (N, H, W, 3) as the demo draws them."""
        import numpy as np

        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images).permute(0, 3, 1, 2)
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([self(images[i:i + batch].to(device))[1].argmax(1).cpu()
                          for i in range(0, len(images), batch)]).numpy()


def expected_shapes(width: int, num_classes: int = NUM_CLASSES) -> dict[str, tuple]:
    """Every key of DemoClassifier(width).state_dict() with its shape, without building it."""
    return {k: tuple(v.shape) for k, v in DemoClassifier(width, num_classes).to("meta").state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Loading.

def load_demo_classifier(kind: str, weights: Path, head: Path | None = None, device="cpu") -> DemoClassifier:
    """The classifier of `weights` (a safetensors file as `python -m dmd2report.demo.classifier train` writes it),
    loaded strictly; its width is read off the first convolution. A one-line UserError naming the file otherwise."""
    weights = Path(weights)
    if kind != KIND:
        raise UserError(f"{weights}: encoder kind {kind!r} is not {KIND!r}")
    if head is not None:
        raise UserError(f"{head}: the demo classifier has its head in its own weights file; give no head file")
    sd = read_state_dict(weights, "demo classifier weights")
    # The width is the first convolution's output channels; every other shape (the 12-class head's too) follows.
    first = sd.get("convs.0.weight")
    width = first.shape[0] if first is not None and first.ndim == 4 and first.shape[0] > 0 else 32
    check_state_dict(sd, expected_shapes(width), weights, "demo classifier weights")
    net = DemoClassifier(width)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return net.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
