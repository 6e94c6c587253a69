"""DINOv2 ViT-S/B/L/g-14 backbones, the feature space of FD_DINOv2, with the official linear ImageNet heads.

The network is facebookresearch/dinov2's `DinoVisionTransformer` as its torch.hub entries build it (img_size 518,
patch 14, LayerScale, no block chunks, no register tokens, position embedding interpolated bicubically with offset
0.1 and no antialias; ViT-g/14 with the fused SwiGLU FFN), module for module and with the same parameter names, so
that the official `dinov2_vit*14_pretrain.pth` files load with `strict=True`. The features are the CLS token after
the final norm (what the hub model returns). The preprocessing is EDM2's FD_DINOv2 detector's (`calculate_metrics.py`,
`DINOv2Detector`, resize_mode "torch"): the uint8 images as float 0..255 resized to 224x224 bicubic with antialias,
then divided by 255 and normalised with the ImageNet mean and std, all in float32. An optional official linear head
(`dinov2_vit*14_linear_head.pth`: CLS and mean patch token of the last block; `*_linear4_head.pth`: the CLS tokens of
the last four blocks and the last block's mean patch token, each after the final norm) gives ImageNet-1k logits.
The network runs in its parameters' dtype (`load_dinov2(..., dtype=torch.bfloat16)` or `.to()` for speed); the
preprocessing stays float32 and the features and logits are returned in float32.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from .weights import check_state_dict, read_state_dict

# The hub's four backbones: width, depth, heads, FFN.
VARIANTS = {
    "dinov2-vits14": {"embed_dim": 384, "depth": 12, "num_heads": 6, "ffn_layer": "mlp"},
    "dinov2-vitb14": {"embed_dim": 768, "depth": 12, "num_heads": 12, "ffn_layer": "mlp"},
    "dinov2-vitl14": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "ffn_layer": "mlp"},
    "dinov2-vitg14": {"embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn_layer": "swiglufused"},
}
NAMES = {"dinov2-vits14": "ViT-S/14", "dinov2-vitb14": "ViT-B/14", "dinov2-vitl14": "ViT-L/14",
         "dinov2-vitg14": "ViT-g/14"}
RESOLUTION = 224                        # EDM2's FD_DINOv2 input size
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_CLASSES = 1000                     # the official linear heads are ImageNet-1k classifiers

# ------------------------------------------------------------------------------------------------
# Patch embedding: a stride-14 convolution, tokens in row-major order.

class PatchEmbed(torch.nn.Module):
    def __init__(self, img_size=518, patch_size=14, in_chans=3, embed_dim=1024):
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = torch.nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)      # (N, tokens, dim)

# ------------------------------------------------------------------------------------------------
# Multi-head self-attention with a fused qkv projection, through PyTorch's SDPA (flash on CUDA in bfloat16).

class Attention(torch.nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = torch.nn.Linear(dim, dim * 3, bias=True)
        self.proj = torch.nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)          # default scale head_dim ** -0.5, as upstream
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

# ------------------------------------------------------------------------------------------------
# The two FFNs: GELU MLP (S, B, L) and the fused SwiGLU of ViT-g (one w12 projection, SiLU gate on its first half).

class Mlp(torch.nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFNFused(torch.nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8          # upstream's width rule: 4096 for ViT-g
        self.w12 = torch.nn.Linear(dim, 2 * hidden)
        self.w3 = torch.nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)

# ------------------------------------------------------------------------------------------------
# Pre-norm transformer block with LayerScale on both residual branches.

class LayerScale(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(torch.nn.Module):
    def __init__(self, dim, num_heads, ffn_layer="mlp", mlp_ratio=4):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.mlp = {"mlp": Mlp, "swiglufused": SwiGLUFFNFused}[ffn_layer](dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))

# ------------------------------------------------------------------------------------------------
# The DINOv2 backbone (upstream's DinoVisionTransformer, inference only), its optional linear head, and the
# FD_DINOv2 preprocessing: `forward` takes uint8 images and returns float32 (CLS features, logits or None).

class DINOv2(torch.nn.Module):
    def __init__(self, kind="dinov2-vitl14", embed_dim=1024, depth=24, num_heads=16, ffn_layer="mlp",
                 img_size=518, patch_size=14, head_layers=0, interpolate_offset=0.1):
        super().__init__()
        self.kind = kind
        self.feature_dim = embed_dim
        self.patch_size = patch_size
        self.interpolate_offset = interpolate_offset
        self.head_layers = head_layers                      # 0: no head; 1 or 4: blocks whose CLS tokens it reads
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.mask_token = torch.nn.Parameter(torch.zeros(1, embed_dim))  # training only; in the state dict
        self.blocks = torch.nn.ModuleList([Block(embed_dim, num_heads, ffn_layer) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(embed_dim, eps=1e-6)
        self.linear_head = torch.nn.Linear((1 + head_layers) * embed_dim, HEAD_CLASSES) if head_layers else None

    @property
    def num_classes(self) -> int:
        return HEAD_CLASSES if self.linear_head is not None else 0

    @property
    def class_order(self) -> str:
        return "imagenet" if self.linear_head is not None else ""

    @property
    def protocol(self) -> str:
        reads = ("CLS and mean patch token of the last block" if self.head_layers == 1
                 else "CLS tokens of the last 4 blocks and the last block's mean patch token")
        head = "" if self.linear_head is None else f"; logits: the official ImageNet-1k linear head over the {reads}"
        same = ("the network of EDM2's published FD_DINOv2" if self.kind == "dinov2-vitl14" else
                "EDM2 uses ViT-L/14, so FDs in this space are not comparable with its published FD_DINOv2")
        return (f"DINOv2 {NAMES.get(self.kind, self.kind)} CLS embedding after the final norm, preprocessed as EDM2's "
                f"FD_DINOv2 detector (calculate_metrics.py, resize_mode 'torch') does it: uint8 images as float 0..255 "
                f"resized to {RESOLUTION}x{RESOLUTION} bicubic with antialias, then /255 and ImageNet mean/std, "
                f"position embedding interpolated as the torch.hub model does (bicubic, offset 0.1, no antialias); "
                f"dgm-eval's original resizes uint8 images with PIL (EDM2's resize_mode 'pil') and differs slightly; "
                f"{same}{head}.")

    def interpolate_pos_encoding(self, h, w):
        """The position embedding for an h x w pixel input: upstream's bicubic resampling of the 37x37 grid, by a scale
        factor of (grid + 0.1) / 37 rather than a size (the hub models' choice), in float32."""
        N = self.pos_embed.shape[1] - 1
        M = int(math.sqrt(N))
        h0, w0 = h // self.patch_size, w // self.patch_size
        if h0 * w0 == N and h0 == w0:
            return self.pos_embed
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)
        scale = ((h0 + self.interpolate_offset) / M, (w0 + self.interpolate_offset) / M)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        assert grid.shape[-2:] == (h0, w0)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([pos[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 (N, 3, 224, 224) exactly as EDM2's DINOv2Detector: resize the 0..255 values
        first (so the bicubic overshoot is kept, not clipped), then scale and normalise."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DINOv2 takes uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = F.interpolate(images.to(torch.float32), size=(RESOLUTION, RESOLUTION), mode="bicubic", antialias=True)
        x = x / 255
        x = x - torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
        return x / torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised float images (N, 3, H, W), H and W multiples of 14 -> float32 (CLS features, logits or None);
        the network runs in its parameters' dtype."""
        x = x.to(self.cls_token.dtype)
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(x.shape[2], x.shape[3])
        keep = len(self.blocks) - max(self.head_layers, 1)   # outputs of the blocks after this one are kept
        kept = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i >= keep:
                kept.append(tokens)
        last = self.norm(tokens)
        features = last[:, 0]
        if self.linear_head is None:
            return features.float(), None
        cls = [self.norm(t[:, 0]) for t in kept[:-1]] + [features]   # upstream normalises each block's output
        logits = self.linear_head(torch.cat(cls + [last[:, 1:].mean(dim=1)], dim=1))
        return features.float(), logits.float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encode(self.preprocess(images))

# ------------------------------------------------------------------------------------------------
# Loading the user's files: the official backbone state dict and, optionally, the official linear head.

def build_dinov2(kind: str, head_layers: int = 0, device="cpu") -> DINOv2:
    """The architecture of `kind` (parameters uninitialised when device is "meta")."""
    if kind not in VARIANTS:
        raise UserError(f"unknown DINOv2 kind {kind!r}; the kinds are {', '.join(VARIANTS)}")
    with torch.device(device):
        return DINOv2(kind, **VARIANTS[kind], head_layers=head_layers)


def _kind_hint(sd: dict[str, torch.Tensor], kind: str, path: Path) -> None:
    """Refuse, naming the right kind, a DINOv2 file of another size or one with register tokens."""
    if "register_tokens" in sd:
        raise UserError(f"{path}: holds a DINOv2 backbone with {sd['register_tokens'].shape[1]} register tokens "
                        f"(a *_reg*_pretrain.pth file); {kind} is the backbone without registers "
                        f"(dinov2_{kind.split('-')[1]}_pretrain.pth)")
    width = sd["cls_token"].shape[-1] if "cls_token" in sd and "patch_embed.proj.weight" in sd else None
    other = next((k for k, v in VARIANTS.items() if v["embed_dim"] == width), None)
    if other is not None and other != kind:
        raise UserError(f"{path}: holds a DINOv2 {NAMES[other]} backbone (cls_token width {width}, expected "
                        f"{VARIANTS[kind]['embed_dim']} for {kind}); give kind {other!r} or the {NAMES[kind]} file")


def load_dinov2(kind: str, weights: Path, head: Path | None = None, device="cpu",
                dtype: torch.dtype = torch.float32) -> DINOv2:
    """The DINOv2 encoder `kind` with the backbone state dict in `weights` and, when given, the official linear head in
    `head`, loaded strictly, in eval mode on `device` in `dtype`; a one-line UserError naming the file otherwise."""
    weights = Path(weights)
    what = f"the DINOv2 {NAMES.get(kind, kind)} backbone (dinov2_{kind.split('-')[-1]}_pretrain.pth)"
    build_dinov2(kind, device="meta")                       # an unknown kind is refused before any file is read
    head_sd, head_layers = {}, 0                            # the small head file first: refused without reading 1 GB
    if head is not None:
        head = Path(head)
        dim = VARIANTS[kind]["embed_dim"]
        head_what = f"the DINOv2 {NAMES[kind]} linear head (dinov2_{kind.split('-')[-1]}_linear_head.pth)"
        head_sd = read_state_dict(head, head_what)
        w = head_sd.get("weight")
        if set(head_sd) == {"weight", "bias"} and w is not None and w.ndim == 2:
            head_layers = {2 * dim: 1, 5 * dim: 4}.get(w.shape[1], 0)
            if w.shape[0] != HEAD_CLASSES or not head_layers:
                fits = [k for k, v in VARIANTS.items() if w.shape[1] in (2 * v["embed_dim"], 5 * v["embed_dim"])]
                hint = f"the head of kind {fits[0]!r}?" if fits and w.shape[0] == HEAD_CLASSES else "another task?"
                raise UserError(f"{head}: a linear head {w.shape[1]} -> {w.shape[0]}, not an official ImageNet head "
                                f"of {NAMES[kind]} ({2 * dim} or {5 * dim} -> {HEAD_CLASSES}); {hint}")
        check_state_dict(head_sd, {"weight": (HEAD_CLASSES, 2 * dim), "bias": (HEAD_CLASSES,)}
                         if not head_layers else {"weight": tuple(w.shape), "bias": (HEAD_CLASSES,)}, head, head_what)
    sd = read_state_dict(weights, what)
    _kind_hint(sd, kind, weights)
    model = build_dinov2(kind, head_layers, device="meta")
    backbone = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("linear_head.")}
    check_state_dict(sd, backbone, weights, what)
    sd.update({f"linear_head.{k}": v for k, v in head_sd.items()})
    model.load_state_dict(sd, strict=True, assign=True)    # assign: no time spent initialising weights first
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
