"""The network as `runtime.CompiledForward` compiles it: `EDMPrecond.forward_capture` written again
over the same modules and parameters, in forms that Inductor turns into faster kernels.

Compiled, Inductor lays the convolutions' activations out channels-last, (n, h, w, c) in memory.
The code between the convolutions, written over (n, c, h, w) as `models.unet` writes it, then reads
and writes memory across the grain. Each form below is the same function as the `models.unet` code
it stands for, up to rounding, and was adopted after a side-by-side measurement of the compiled
network with and without it (benchmarks/README.md has the current figures):

- group norm from per-channel statistics, and the blocks' group norm / scale-shift / SiLU tails
  written over (n, h, w, c) views (`group_norm`);
- attention as matrix products over (n, pixels, channels) tokens (`attention`);
- the decoder's skip concatenations built channels-last (`cat_channels_last`);
- the up blocks' convolutions computed from the low-resolution maps (`conv_after_upsampling`).

Nothing here runs eager: eager calls (`model.compile = "off"`, small stages, masking hooks,
`force_fp32`, the CPU) run `models.unet`, upstream's arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .unet import Conv2d, GroupNorm, UNetBlock


# ------------------------------------------------------------------------------------------------
# Preconditioning (EDMPrecond.forward_capture), around the compiled UNet.


def forward_capture(net, x, sigma, class_labels, capture=(), stop_after=None):
    """`net.forward_capture(x, sigma, class_labels, capture=capture, stop_after=stop_after)` with the
    UNet's compiled forms. sigma is (n,) and class_labels (n, label_dim) float32 or None, as
    `runtime.CompiledForward` passes them."""
    x = x.to(torch.float32)
    sigma = sigma.reshape(-1, 1, 1, 1)
    dtype = net.unet_dtype(x.device)

    c_skip = net.sigma_data ** 2 / (sigma ** 2 + net.sigma_data ** 2)
    c_out = sigma * net.sigma_data / (sigma ** 2 + net.sigma_data ** 2).sqrt()
    c_in = 1 / (net.sigma_data ** 2 + sigma ** 2).sqrt()
    c_noise = sigma.log() / 4

    F_x, acts = unet_forward_capture(net.model, (c_in * x).to(dtype), c_noise.flatten(), class_labels,
                                     capture, stop_after)
    if F_x is None:
        return None, acts
    return c_skip * x + c_out * F_x.to(torch.float32), acts


# ------------------------------------------------------------------------------------------------
# The UNet (DhariwalUNet.forward_capture).


def unet_forward_capture(unet, x, noise_labels, class_labels, capture, stop_after):
    emb = unet.embed(noise_labels, class_labels)
    acts = {}

    # Encoder.
    skips = []
    for name, block in unet.enc.items():
        x = block_forward(block, x, emb) if isinstance(block, UNetBlock) else conv2d(block, x)
        skips.append(x)
        if "enc." + name in capture:
            acts["enc." + name] = x
        if stop_after == "enc." + name:
            return None, acts

    # Decoder.
    for name, block in unet.dec.items():
        if x.shape[1] != block.in_channels:
            x = cat_channels_last(x, skips.pop())
        x = block_forward(block, x, emb)
        if "dec." + name in capture:
            acts["dec." + name] = x
        if stop_after == "dec." + name:
            return None, acts
    return conv2d(unet.out_conv, group_norm(unet.out_norm, x, silu=True)), acts


def cat_channels_last(x, skip):
    """torch.cat([x, skip], dim=1), channels-last.

    Inductor gives a concatenation the contiguous (n, c, h, w) layout unless one of its inputs
    already has a fixed channels-last one, so the decoder's concatenated maps came out (n, c, h, w)
    among channels-last convolutions, and every kernel reading them read across the grain.
    Concatenating (n, pixels, channels) views makes the result channels-last by construction.
    """
    h, w = x.shape[2:]
    y = torch.cat([x.flatten(2).transpose(1, 2), skip.flatten(2).transpose(1, 2)], dim=2)
    return y.transpose(1, 2).unflatten(2, (h, w))


# ------------------------------------------------------------------------------------------------
# A UNet block (UNetBlock.forward).


def block_forward(block: UNetBlock, x, emb):
    orig = x
    x = conv2d(block.conv0, group_norm(block.norm0, x, silu=True))

    params = block.affine(emb).unsqueeze(2).unsqueeze(3)  # float32, like emb
    if block.adaptive_scale:
        scale, shift = params.chunk(chunks=2, dim=1)
        x = group_norm(block.norm1, x, scale, shift, silu=True)
    else:
        x = group_norm(block.norm1, x + params.to(x.dtype), silu=True)

    x = conv2d(block.conv1, F.dropout(x, p=block.dropout, training=block.training))
    x = x.add_(conv2d(block.skip, orig) if block.skip is not None else orig)
    x = x * block.skip_scale

    if block.num_heads:
        x = attention(block, x) * block.skip_scale
    return x


def attention(block: UNetBlock, x):
    """`block.attention(x)` as matrix products over (n, pixels, channels) tokens.

    Tokens are the channels-last maps' memory order. qkv's weight rows are regrouped from upstream's
    (heads, channels per head, q|k|v) to (q|k|v, heads, channels per head), so that q, k and v are
    strided views of one product with contiguous channels, which flash attention reads in place, and
    its (n, pixels, heads, channels) output is the projection's input without a transpose.
    float32 (reference runs, the CPU) keeps upstream's arithmetic.
    """
    if x.dtype == torch.float32:
        return block.attention(x)
    n, c, h, w = x.shape
    heads, d = block.num_heads, c // block.num_heads
    t = group_norm(block.norm2, x).permute(0, 2, 3, 1).reshape(n, h * w, c)
    w_qkv = block.qkv.weight.to(t.dtype).view(heads, d, 3, c).permute(2, 0, 1, 3).reshape(3 * c, c)
    b_qkv = block.qkv.bias.to(t.dtype).view(heads, d, 3).permute(2, 0, 1).reshape(3 * c)
    q, k, v = F.linear(t, w_qkv, b_qkv).view(n, h * w, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, c)
    y = F.linear(a, block.proj.weight.to(a.dtype).view(c, c), block.proj.bias.to(a.dtype))
    return y.view(n, h, w, c).permute(0, 3, 1, 2).add(x)


# ------------------------------------------------------------------------------------------------
# Group norm and the blocks' elementwise tails, over (n, h, w, c) views.


def group_norm(norm: GroupNorm, x, scale=None, shift=None, silu: bool = False):
    """norm(x); with a block's adaptive scale and shift, shift + norm(x) (scale + 1); with silu, SiLU
    of that (unet.norm_silu). In float32, cast back to x.dtype once; an (n, c, h, w) view of a
    channels-last result.

    Written over the (n, h, w, c) view because a pointwise kernel iterates over its output's shape:
    over (n, c, h, w), Inductor orders the loops by a vote among the kernel's loads, where the
    per-(sample, channel) statistics and affine parameters outvote the one large channels-last map,
    and it then tiles in 2-D to read that map. Over (n, h, w, c) every load agrees with memory order.
    """
    n, c = x.shape[:2]
    xh = x.permute(0, 2, 3, 1).float()
    var_c, mean_c = torch.var_mean(xh, dim=(1, 2), correction=0)
    a, b = group_affine(norm, mean_c, var_c)
    y = torch.addcmul(b.view(n, 1, 1, c), xh, a.view(n, 1, 1, c))
    if scale is not None:
        y = torch.addcmul(shift.float().reshape(n, 1, 1, c), y, scale.float().reshape(n, 1, 1, c) + 1)
    if silu:
        y = F.silu(y)
    return y.to(x.dtype).permute(0, 3, 1, 2)


def group_affine(norm: GroupNorm, mean_c, var_c):
    """Group norm as y = a x + b per (sample, channel), from per-channel means and variances (n, c).

    Channels-last, a group's channels are a few scattered elements of every pixel, and a reduction
    over the group reads them scattered; per-channel statistics reduce over pixels with consecutive
    channels side by side. The group's follow exactly (equal counts per channel): its mean is the
    mean of the channel means, its variance the mean of the channel variances plus the channel
    means' spread.
    """
    n, c = mean_c.shape
    groups = norm.num_groups
    mean_c, var_c = mean_c.view(n, groups, -1), var_c.view(n, groups, -1)
    mean = mean_c.mean(dim=2, keepdim=True)
    var = (var_c + (mean_c - mean).square()).mean(dim=2, keepdim=True)
    a = torch.rsqrt(var + norm.eps) * norm.weight.float().view(groups, -1)  # (n, groups, channels per group)
    b = norm.bias.float().view(groups, -1) - mean * a
    return a.view(n, c), b.view(n, c)


# ------------------------------------------------------------------------------------------------
# Convolutions (Conv2d.forward); an up block's from the low-resolution map.


def conv2d(conv: Conv2d, x):
    if conv.up and conv.box_resample and conv.weight is not None:
        return conv_after_upsampling(x, conv.weight, conv.bias)
    return conv(x)


# Which of a 3-tap kernel's taps (rows) each output phase's two taps sum, for a 3x3 convolution after
# nearest 2x upsampling: output row 2i reads upsampled rows 2i-1, 2i, 2i+1 = low-resolution rows i-1, i, i;
# row 2i+1 reads rows i, i, i+1. Phase 0's two taps are low rows (i-1, i), phase 1's are (i, i+1).
PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def conv_after_upsampling(x, weight, bias=None):
    """conv2d(nearest 2x upsampling of x, weight, bias), padding the kernel's half width, computed
    from x itself: the upsampled map is never written and read back.

    Nearest upsampling repeats every pixel 2x2, so each of the four output phases (row and column
    parity) is a 2x2 convolution of the low-resolution map with taps summed from the 3x3 kernel:
    16 instead of 36 multiply-adds per low-resolution pixel and channel pair. The four phases run as
    one convolution (4 x out channels, 2x2 kernel, padding 1, so that the (h + 1) x (w + 1) outputs
    hold both phases' windows) and interleave by index arithmetic, which Inductor folds into the
    kernels that read the result. A 1x1 kernel commutes with the upsampling: it runs at low
    resolution and its output is upsampled. Taps are summed in float32 before the products.
    """
    n, c, h, wd = x.shape
    o, k = weight.shape[0], weight.shape[-1]
    b = bias.to(x.dtype).reshape(1, -1, 1, 1) if bias is not None else None
    if k == 1:
        y = F.conv2d(x, weight.to(x.dtype))
        return F.interpolate(y + b if b is not None else y, scale_factor=2, mode="nearest")
    assert k == 3, k
    taps = torch.tensor(PHASE_TAPS, dtype=torch.float32, device=weight.device)  # (phase, tap, 3)
    w4 = torch.einsum("aiu,bjv,ocuv->abocij", taps, taps, weight.float()).reshape(4 * o, c, 2, 2).to(x.dtype)
    y = F.conv2d(x, w4, padding=1)  # (n, (phase row, phase column, o), h + 1, w + 1)
    # Output pixel (2i + a, 2j + b) is phase (a, b)'s output at (i + a, j + b): with Y = 2i + a, the
    # low-resolution row is (Y + 1) // 2 and the phase Y % 2.
    rows = torch.arange(2 * h, device=x.device)
    cols = torch.arange(2 * wd, device=x.device)
    yh = y.permute(0, 2, 3, 1).view(n, h + 1, wd + 1, 2, 2, o)
    out = torch.ops.aten._unsafe_index(yh, [None, ((rows + 1) // 2)[:, None], ((cols + 1) // 2)[None, :],
                                            (rows % 2)[:, None], (cols % 2)[None, :]])
    out = out.permute(0, 3, 1, 2)  # (n, o, 2h, 2w), channels-last
    return out + b if b is not None else out
