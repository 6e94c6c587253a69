"""EDM preconditioning (Karras et al. 2022, Table 1), the wrapper DMD2's generator is saved as."""

from __future__ import annotations

import torch

from .unet import DhariwalUNet

MODEL_TYPES = {"DhariwalUNet": DhariwalUNet}


class EDMPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
                 sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", **model_kwargs):
        super().__init__()
        # Kept so that a structural copy (meta device, layer shapes, inspect) can be rebuilt.
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                                use_fp16=use_fp16, sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                                model_type=model_type, **model_kwargs)
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {model_type!r}; known: {', '.join(MODEL_TYPES)}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = float(sigma_max)
        self.sigma_data = sigma_data
        self.model = MODEL_TYPES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                             out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def unet_dtype(self, device: torch.device, force_fp32: bool = False) -> torch.dtype:
        # DMD2 runs the fp16 path of EDM in bfloat16 (wider range, no loss scaling needed).
        return torch.bfloat16 if (self.use_fp16 and not force_fp32 and device.type == "cuda") else torch.float32

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        return self.forward_capture(x, sigma, class_labels, force_fp32, **model_kwargs)[0]

    def forward_capture(self, x, sigma, class_labels=None, force_fp32=False, capture=(), stop_after=None,
                        **model_kwargs):
        """(D(x), {block name: output}); D(x) is None when the pass stopped after `stop_after`.

        On CUDA, `runtime.prepare` (unless `model.compile = "off"`) replaces this method on the
        instance by `runtime.CompiledForward`, which `forward` then goes through too."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        sigma = sigma.reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = self.unet_dtype(x.device, force_fp32)

        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4

        F_x, acts = self.model.forward_capture((c_in * x).to(dtype), c_noise.flatten(), class_labels,
                                               capture=capture, stop_after=stop_after, **model_kwargs)
        if F_x is None:
            return None, acts
        return c_skip * x + c_out * F_x.to(torch.float32), acts
