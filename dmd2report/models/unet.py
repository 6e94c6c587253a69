"""The ADM ("Dhariwal") UNet of EDM, parameter for parameter.

Module and parameter names follow EDM's `training/networks.py` so that DMD2's released
ImageNet-64 checkpoints load with `strict=True`. In float32 the arithmetic is upstream's. In
bfloat16 (DMD2's precision on CUDA) normalisation and the blocks' elementwise tails run in float32
and attention runs as flash SDPA. Weight initialisation is upstream's (the demo model trains from it).

This is the network as every eager call runs it. `models.compiled` holds the forms that the
compiled graphs (`runtime.CompiledForward`) run over the same modules instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def weight_init(shape, mode, fan_in, fan_out):
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'invalid init mode "{mode}"')


# ------------------------------------------------------------------------------------------------
# Fully-connected layer.


class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        init = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **init) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **init) * init_bias) if bias else None

    def forward(self, x):
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x.add_(self.bias.to(x.dtype))
        return x


# ------------------------------------------------------------------------------------------------
# Convolutional layer with optional 2x up/down resampling by a fixed FIR filter (a buffer, as upstream).


class Conv2d(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=(1, 1), init_mode="kaiming_normal", init_weight=1, init_bias=0):
        assert not (up and down)
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        init = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **init) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **init) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)
        # Set by runtime.use_box_resampling once the weights are loaded, when the filter is the 2x2 box
        # (DMD2's [1, 1]): resampling is then exactly nearest 2x upsampling / 2x2 average pooling,
        # which run far faster than cuDNN's depthwise (transposed) convolutions.
        self.box_resample = False

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.up:
            x = (F.interpolate(x, scale_factor=2, mode="nearest") if self.box_resample else
                 F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad))
        if self.down:
            x = (F.avg_pool2d(x, 2) if self.box_resample else
                 F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad))
        if w is not None:
            x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x.add_(b.reshape(1, -1, 1, 1))
        return x


# ------------------------------------------------------------------------------------------------
# Group normalization, statistics in float32 (group norm over 8x8 maps of large activations is
# where bfloat16 loses the most).


class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return self.forward_float32(x).to(x.dtype)

    def forward_float32(self, x):
        """The normalised x in float32, for a block's elementwise tail to continue in float32."""
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)


def norm_silu(norm: GroupNorm, x, scale=None, shift=None):
    """SiLU(norm(x)), or with a block's adaptive scale and shift SiLU(shift + norm(x) (scale + 1)),
    in float32 and cast back once (in float32, upstream's sequence of operations exactly)."""
    y = norm.forward_float32(x)
    if scale is not None:
        y = torch.addcmul(shift.float(), y, scale.float() + 1)
    return F.silu(y).to(x.dtype)


# ------------------------------------------------------------------------------------------------
# Timestep embedding used in the DDPM++ and ADM architectures.


class PositionalEmbedding(torch.nn.Module):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        freqs = torch.arange(start=0, end=self.num_channels // 2, dtype=torch.float32, device=x.device)
        freqs = freqs / (self.num_channels // 2 - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = x.ger(freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


# ------------------------------------------------------------------------------------------------
# Unified U-Net block with optional up/downsampling and self-attention.


class UNetBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=(1, 1), resample_proj=False, adaptive_scale=True,
                 init=dict(), init_zero=dict(init_weight=0), init_attn=None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down, resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(norm_silu(self.norm0, x))

        params = self.affine(emb).unsqueeze(2).unsqueeze(3)  # float32, like emb
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = norm_silu(self.norm1, x, scale, shift)
        else:
            x = F.silu(self.norm1(x.add_(params.to(x.dtype))))

        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale

        if self.num_heads:
            x = self.attention(x) * self.skip_scale
        return x

    def attention(self, x):
        """x + proj(self-attention of qkv(norm2(x))): the attention sub-block before its skip scale."""
        n, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        if x.dtype == torch.float32:
            # Upstream's channel layout, (heads, channels per head, q|k|v) interleaved, and its
            # arithmetic order, so that float32 results match EDM's to rounding.
            q, k, v = self.qkv(self.norm2(x)).reshape(n * heads, d, 3, h * w).unbind(2)
            attn = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
            a = torch.einsum("nqk,nck->ncq", attn, v).reshape(n, c, h, w)
        else:
            # Reduced precision: fused SDPA, softmax accumulated in float32, without the (tokens x
            # tokens) matrix. Flash attention needs (n, heads, tokens, channels) with contiguous
            # channels; from strided views SDPA falls back to its slow float32 math path.
            qkv = self.qkv(self.norm2(x)).reshape(n, heads, d, 3, h * w)
            q, k, v = qkv.permute(3, 0, 1, 4, 2).contiguous().unbind(0)
            a = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(n, c, h, w)
        return self.proj(a).add_(x)


# ------------------------------------------------------------------------------------------------
# Reimplementation of the ADM architecture from the paper "Diffusion Models Beat GANS on Image
# Synthesis" (Dhariwal & Nichol 2021), as EDM (Karras et al. 2022) writes it.


class DhariwalUNet(torch.nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3,
                 attn_resolutions=(32, 16, 8), dropout=0.10, label_dropout=0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        # Mapping.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        # DMD2 deletes map_augment before loading; with augment_dim=0 it never exists.
        self.map_augment = Linear(augment_dim, model_channels, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(augment_dim)) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(label_dim)) if label_dim else None

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def embed(self, noise_labels, class_labels, augment_labels=None):
        """The mapping network: the embedding every block's affine layer reads (float32, as upstream)."""
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        return F.silu(emb)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        return self.forward_capture(x, noise_labels, class_labels, augment_labels)[0]

    def forward_capture(self, x, noise_labels, class_labels, augment_labels=None, capture=(), stop_after=None):
        """`forward`, also returning {name: output} of the blocks named in `capture` (`enc.8x8_block2`, ...).

        With `stop_after` a block name the pass ends right after that block and the output is None
        (extracting `midblock` needs about 60 of the network's 219 GFLOP). Names are plain strings,
        so that torch.compile sees one static graph per (capture, stop_after).
        """
        emb = self.embed(noise_labels, class_labels, augment_labels)
        acts = {}

        # Encoder.
        skips = []
        for name, block in self.enc.items():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
            if "enc." + name in capture:
                acts["enc." + name] = x
            if stop_after == "enc." + name:
                return None, acts

        # Decoder.
        for name, block in self.dec.items():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
            if "dec." + name in capture:
                acts["dec." + name] = x
            if stop_after == "dec." + name:
                return None, acts
        return self.out_conv(F.silu(self.out_norm(x))), acts
