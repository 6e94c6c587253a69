"""The ADM ("Dhariwal") UNet of EDM, parameter for parameter.

Module and parameter names follow EDM's `training/networks.py` so that DMD2's released
ImageNet-64 checkpoints load with `strict=True`. Only inference matters here: weight
initialisation is kept (the demo model trains from it) but dropout is the only
training-time behaviour besides label dropout.
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


class Conv2d(torch.nn.Module):
    """Convolution with optional 2x up/down resampling by a fixed FIR filter (a buffer, as upstream)."""

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
        # Set by runtime.prepare once the weights are loaded, when the filter is the 2x2 box [1, 1]
        # (DMD2's): the resampling is then exactly nearest 2x upsampling / 2x2 average pooling, which
        # run far faster than cuDNN's depthwise (transposed) convolutions.
        self.box_resample = False

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.up and self.box_resample and w is not None and SUBPIXEL_UP and torch.compiler.is_compiling():
            return _conv_after_upsampling(x, self.weight, b)  # taps summed from the float32 weights
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


# Under torch.compile, a convolution after nearest 2x upsampling computed from the low-resolution map
# (see _conv_after_upsampling); a switch so that benchmarks/kernels.py measures it against the
# convolution on the upsampled map (`before-subpixel-up`): 2,011 -> 2,119 generated img/s, model only.
SUBPIXEL_UP = True

# Which of a 3-tap kernel's taps (rows) each output phase's two taps sum, for a 3x3 convolution after
# nearest 2x upsampling: output row 2i reads upsampled rows 2i-1, 2i, 2i+1 = low-resolution rows i-1, i, i;
# row 2i+1 reads rows i, i, i+1. Phase 0's two taps are low rows (i-1, i), phase 1's are (i, i+1).
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _conv_after_upsampling(x, w, b):
    """conv2d(nearest 2x upsampling of x, w, b), padding w's half width, computed from x itself.

    Nearest upsampling repeats every pixel 2x2, so each of the four output phases (row and column
    parity) is a 2x2 convolution of the low-resolution map with taps summed from w: for a 3x3 kernel
    16 instead of 36 multiply-adds per low-resolution pixel and channel pair, and no upsampled
    map written and read back. All four phases run as one convolution (4 x out channels, 2x2 kernel,
    padding 1, so the (h + 1) x (w + 1) outputs hold both phases' windows); the phases interleave by
    index arithmetic, which Inductor folds into the kernels that read the result. A 1x1 kernel
    commutes with the upsampling: it runs at low resolution and its output is upsampled.
    The same function up to rounding (taps are summed before the products).
    """
    n, c, h, wd = x.shape
    o, k = w.shape[0], w.shape[-1]
    if k == 1:
        y = F.conv2d(x, w.to(x.dtype))
        if b is not None:
            y = y + b.reshape(1, -1, 1, 1)
        return F.interpolate(y, scale_factor=2, mode="nearest")
    assert k == 3, k
    taps = torch.tensor(_PHASE_TAPS, dtype=torch.float32, device=w.device)  # (phase, tap, 3)
    w4 = torch.einsum("aiu,bjv,ocuv->abocij", taps, taps, w.float()).reshape(4 * o, c, 2, 2).to(x.dtype)
    y = F.conv2d(x, w4, padding=1)  # (n, (phase row, phase column, o), h + 1, w + 1)
    # Output pixel (2i + a, 2j + b) is phase (a, b)'s output at (i + a, j + b): with Y = 2i + a, the
    # low row is (Y + 1) // 2 and the phase Y % 2.
    rows = torch.arange(2 * h, device=x.device)
    cols = torch.arange(2 * wd, device=x.device)
    yh = y.permute(0, 2, 3, 1).view(n, h + 1, wd + 1, 2, 2, o)
    out = torch.ops.aten._unsafe_index(yh, [None, ((rows + 1) // 2)[:, None], ((cols + 1) // 2)[None, :],
                                            (rows % 2)[:, None], (cols % 2)[None, :]])
    out = out.permute(0, 3, 1, 2)  # (n, o, 2h, 2w), channels-last
    return out + b.reshape(1, -1, 1, 1) if b is not None else out


class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        # Statistics in float32 even when the UNet runs in bfloat16: group norm over
        # 8x8 maps of large activations is where bf16 loses the most.
        if NHWC_ELEMENTWISE and COMPILED_CHANNEL_STATS and torch.compiler.is_compiling():
            return _norm_nhwc(x, self.num_groups, self.weight, self.bias, self.eps, silu=False)
        return group_norm_f32(x, self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


# Under torch.compile, group norm from per-channel statistics (see group_norm_f32); a switch so that
# benchmarks/forward.py can measure Inductor's own decomposition side by side.
COMPILED_CHANNEL_STATS = True
# Under torch.compile, the group norm / scale-shift / SiLU tails written over (n, h, w, c) views of the
# channels-last maps (see _norm_nhwc), and attention as token matrix products (TOKEN_ATTENTION).
# Switches so that benchmarks/kernels.py measures them side by side (`nhwc-norm`, `token-attention`):
# together they took generation from 1,952 to 2,019 img/s model only on an H200 (benchmarks/README.md).
NHWC_ELEMENTWISE = True


def group_norm_f32(x, num_groups: int, weight, bias, eps: float):
    """F.group_norm of x in float32.

    Compiled, Inductor lays the convolutions' activations out channels-last, where a group's
    channels are a few scattered elements of every pixel: its group-norm reduction then reads
    memory badly. Per-channel mean and variance reduce over pixels with consecutive channels side by
    side (coalesced), and the group's statistics follow exactly from them (see _group_affine).
    Eager, ATen's kernel runs as is.
    """
    if not (COMPILED_CHANNEL_STATS and torch.compiler.is_compiling()):
        return F.group_norm(x.float(), num_groups, weight.float(), bias.float(), eps)
    n, c = x.shape[:2]
    xf = x.float()
    var_c, mean_c = torch.var_mean(xf, dim=(2, 3), correction=0)
    a, b = _group_affine(mean_c, var_c, num_groups, weight, bias, eps)
    return torch.addcmul(b.view(n, c, 1, 1), xf, a.view(n, c, 1, 1))


def _group_affine(mean_c, var_c, num_groups: int, weight, bias, eps: float):
    """Group norm as y = a x + b per (sample, channel), from per-channel means and variances (n, c).

    Equal counts per channel: the group mean is the mean of the channel means, the group variance
    the mean of the channel variances plus the channel means' spread."""
    n, c = mean_c.shape
    mean_c, var_c = mean_c.view(n, num_groups, -1), var_c.view(n, num_groups, -1)
    mean = mean_c.mean(dim=2, keepdim=True)
    var = (var_c + (mean_c - mean).square()).mean(dim=2, keepdim=True)
    a = torch.rsqrt(var + eps) * weight.float().view(num_groups, -1)  # (n, groups, channels per group)
    b = bias.float().view(num_groups, -1) - mean * a
    return a.view(n, c), b.view(n, c)


def _group_norm_nhwc(xh, num_groups: int, weight, bias, eps: float):
    """group_norm_f32 of a float32 (n, h, w, c) view; the result (n, h, w, c)."""
    n, c = xh.shape[0], xh.shape[3]
    var_c, mean_c = torch.var_mean(xh, dim=(1, 2), correction=0)
    a, b = _group_affine(mean_c, var_c, num_groups, weight, bias, eps)
    return torch.addcmul(b.view(n, 1, 1, c), xh, a.view(n, 1, 1, c))


def _norm_nhwc(x, num_groups: int, weight, bias, eps: float, scale=None, shift=None, silu: bool = True):
    """norm_silu (or GroupNorm's forward, silu=False) computed over the (n, h, w, c) view of x and
    returned as the (n, c, h, w) view of that, cast to x.dtype.

    Why: a pointwise kernel iterates over its output's shape. Written over (n, c, h, w), Inductor
    orders the loops by a vote among the kernel's loads, where the per-(sample, channel) statistics
    and affine parameters outvote the one large channels-last map, and it then tiles in 2-D to read
    that map coalesced. Over (n, h, w, c) every load agrees with memory order: a plain 1-D kernel.
    """
    n, c = x.shape[:2]
    y = _group_norm_nhwc(x.permute(0, 2, 3, 1).float(), num_groups, weight, bias, eps)
    if scale is not None:
        y = torch.addcmul(shift.float().reshape(n, 1, 1, c), y, scale.float().reshape(n, 1, 1, c) + 1)
    if silu:
        y = F.silu(y)
    return y.to(x.dtype).permute(0, 3, 1, 2)


# Under torch.compile, attention as token matrix products reading q, k, v in place (UNetBlock.attention).
TOKEN_ATTENTION = True


# Under torch.compile, the decoder's skip concatenations laid out channels-last (see cat_channels);
# a switch so that benchmarks/kernels.py can measure it side by side with Inductor's default.
CHANNELS_LAST_CAT = True


def cat_channels(x, skip):
    """torch.cat([x, skip], dim=1).

    Compiled, Inductor gives a concatenation the contiguous (NCHW) layout unless one of its inputs
    already has a fixed channels-last one, so the decoder's concatenated maps came out NCHW among
    channels-last convolutions and every kernel reading them read memory across the grain.
    Concatenating (n, pixels, channels) views instead makes the result channels-last by
    construction (same values). Eager, torch.cat runs as is.
    """
    if not (CHANNELS_LAST_CAT and torch.compiler.is_compiling()):
        return torch.cat([x, skip], dim=1)
    h, w = x.shape[2:]
    y = torch.cat([x.flatten(2).transpose(1, 2), skip.flatten(2).transpose(1, 2)], dim=2)
    return y.transpose(1, 2).unflatten(2, (h, w))


def norm_silu(x, weight, bias, num_groups: int, eps: float, scale=None, shift=None):
    """SiLU(GroupNorm(x)), or with the block's adaptive scale and shift SiLU(shift + GN(x) (scale + 1)).

    The elementwise tail of every UNet block, computed in float32 and cast back once (in float32 it
    is exactly upstream's sequence of operations; compiled, the upcast is free inside one kernel).
    """
    if NHWC_ELEMENTWISE and COMPILED_CHANNEL_STATS and torch.compiler.is_compiling():
        return _norm_nhwc(x, num_groups, weight, bias, eps, scale, shift)
    y = group_norm_f32(x, num_groups, weight, bias, eps)
    if scale is not None:
        y = torch.addcmul(shift.float(), y, scale.float() + 1)
    return F.silu(y).to(x.dtype)


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


class UNetBlock(torch.nn.Module):
    norm_silu = staticmethod(norm_silu)

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
        n0, n1 = self.norm0, self.norm1
        x = self.conv0(self.norm_silu(x, n0.weight, n0.bias, n0.num_groups, n0.eps))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3)  # float32, like emb
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = self.norm_silu(x, n1.weight, n1.bias, n1.num_groups, n1.eps, scale, shift)
        else:
            x = F.silu(self.norm1(x.add_(params.to(x.dtype))))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale

        if self.num_heads:
            x = self.attention(x) * self.skip_scale
        return x

    def attention(self, x):
        """x + proj(self-attention of qkv(norm2(x))), upstream's attention sub-block before the skip scale."""
        n, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        if x.dtype == torch.float32:
            # Upstream's channel layout, (heads, channels per head, q|k|v) interleaved, and its
            # arithmetic order, so float32 results match EDM's to rounding.
            q, k, v = self.qkv(self.norm2(x)).reshape(n * heads, d, 3, h * w).unbind(2)
            attn = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
            a = torch.einsum("nqk,nck->ncq", attn, v).reshape(n, c, h, w)
        elif TOKEN_ATTENTION and torch.compiler.is_compiling():
            # Compiled: the block as matrix products over (n, pixels, channels) tokens, which is the
            # channels-last maps' memory order. qkv's output channels are regrouped (q|k|v, heads,
            # channels per head) so that q, k and v are strided views with contiguous channels,
            # which flash attention reads as they are, and its (n, pixels, heads, channels) output
            # is proj's input without a transpose.
            t = self.norm2(x).permute(0, 2, 3, 1).reshape(n, h * w, c)
            wqkv = self.qkv.weight.to(t.dtype).view(heads, d, 3, c).permute(2, 0, 1, 3).reshape(3 * c, c)
            bqkv = self.qkv.bias.to(t.dtype).view(heads, d, 3).permute(2, 0, 1).reshape(3 * c)
            q, k, v = F.linear(t, wqkv, bqkv).view(n, h * w, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, c)
            y = F.linear(a, self.proj.weight.to(a.dtype).view(c, c), self.proj.bias.to(a.dtype))
            return y.view(n, h, w, c).permute(0, 3, 1, 2).add(x)
        else:
            # Reduced precision: fused SDPA, softmax accumulated in float32. Flash attention needs
            # (n, heads, tokens, channels) with contiguous channels; strided views fall back to the
            # float32 math path (measured: a sixth of the compiled extraction's time). Reading q, k, v
            # in place from a channels-last qkv output (weights reordered to q|k|v, heads, channels)
            # was measured slower compiled (benchmarks/README.md): Inductor still copied them.
            qkv = self.qkv(self.norm2(x)).reshape(n, heads, d, 3, h * w)
            q, k, v = qkv.permute(3, 0, 1, 4, 2).contiguous().unbind(0)
            a = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(n, c, h, w)
        return self.proj(a).add_(x)


class DhariwalUNet(torch.nn.Module):
    """ADM backbone (Dhariwal & Nichol 2021) as reimplemented by EDM (Karras et al. 2022)."""

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
        emb = self.embed(noise_labels, class_labels, augment_labels)  # float32, as upstream
        acts = {}
        skips = []
        for name, block in self.enc.items():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
            if "enc." + name in capture:
                acts["enc." + name] = x
            if stop_after == "enc." + name:
                return None, acts
        for name, block in self.dec.items():
            if x.shape[1] != block.in_channels:
                x = cat_channels(x, skips.pop())
            x = block(x, emb)
            if "dec." + name in capture:
                acts["dec." + name] = x
            if stop_after == "dec." + name:
                return None, acts
        return self.out_conv(F.silu(self.out_norm(x))), acts
