"""Pretrained encoders that give the standard feature spaces (FID's Inception-v3, DINOv2, the demo classifier): uint8
images in, features and logits out.

Each encoder module holds one `torch.nn.Module` whose `forward(images)` takes uint8 images (N, 3, H, W) and returns
float32 features (N, D) and logits (N, C) or None, with the published protocol's preprocessing inside, and a
`load_<name>(kind, weights, head=None, device="cpu")` that reads the user's file through `weights.read_state_dict`
(never unpickling) and loads it strictly. `stats.py` holds the Inception Score and the reference statistics
files of these spaces (their Frechet distance is the engine's, metric_defs.py); `registry.py` maps an `[[encoders]]`
table to its loader.
"""
