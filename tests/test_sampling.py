"""One-step generation: conditioning modes, determinism per (seed, i), image format."""

import numpy as np
import pytest
import torch

from dmd2report.errors import UserError
from dmd2report.layers import ActivationCapture
from dmd2report.models import build_preset
from dmd2report.sampling import condition_vectors, generate, sample_noise, to_uint8


def test_condition_modes():
    K = 10
    one = condition_vectors("class", K, classes=[1, 3])
    assert one.shape == (2, K) and one[0, 1] == 1 and one[1, 3] == 1 and one.sum() == 2
    uni = condition_vectors("uniform", K, count=3)
    assert torch.allclose(uni, torch.full((3, K), 0.1))
    assert condition_vectors("zero", K, count=2).abs().sum() == 0
    blend = condition_vectors("blend", K, weights=[[0, 0, 1, 0, 0, 1, 0, 0, 0, 0]])
    assert torch.allclose(blend[0, [2, 5]], torch.tensor([0.5, 0.5]))
    vec = condition_vectors("vector", K, weights=np.arange(K) / 45.0, count=4)
    assert vec.shape == (4, K)


@pytest.mark.parametrize("args,match", [
    (dict(mode="vector", weights=[[1.0] * 9]), "length 9"),
    (dict(mode="class", classes=[10]), "out of range"),
    (dict(mode="blend", weights=[[0.0] * 10]), "positive sum"),
    (dict(mode="vector", weights=[[float("nan")] * 10]), "NaN"),
    (dict(mode="sideways", count=1), "unknown conditioning"),
])
def test_bad_conditioning(args, match):
    mode = args.pop("mode")
    with pytest.raises(UserError, match=match):
        condition_vectors(mode, 10, **args)


def test_noise_depends_only_on_seed_and_index():
    a = sample_noise(7, range(10), (3, 4, 4))
    b = torch.cat([sample_noise(7, [i], (3, 4, 4)) for i in range(10)])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = sample_noise(7, [5, 2], (3, 4, 4))
    torch.testing.assert_close(c, a[[5, 2]], rtol=0, atol=0)
    assert not torch.equal(sample_noise(8, [0], (3, 4, 4)), a[:1])
    assert abs(a.mean()) < 0.2 and abs(a.std() - 1) < 0.2


def _serial_noise(seed, indices, shape):
    """The definition sample_noise must keep: one generator seeded from SeedSequence([seed, i]) per row."""
    rows = []
    for i in indices:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, int(i)]).generate_state(1, np.uint64)[0] >> 1))
        rows.append(torch.randn(shape, generator=g))
    return torch.stack(rows)


@pytest.mark.parametrize("seed,indices", [
    (0, np.arange(1000)),
    (7, np.arange(5000, 3999, -1)),  # reversed: rows follow the given order
    (123, np.random.default_rng(0).choice(10**6, 777, replace=False)),  # non-contiguous
    (2**40 + 3, np.arange(600) * 2**32 + 5),  # large seed and indices (trajectory noise ids), two 32-bit words
])
def test_threaded_noise_is_the_serial_definition(seed, indices):
    shape = (3, 5, 4)
    ref = _serial_noise(seed, indices, shape)
    for workers in (1, 3, 8):  # 3 and 8 run threads (>= 64 rows each), whatever the CPU count
        torch.testing.assert_close(sample_noise(seed, indices, shape, workers=workers), ref, rtol=0, atol=0)
    torch.testing.assert_close(sample_noise(seed, list(indices), shape), ref, rtol=0, atol=0)


def test_same_images_for_any_batch_size():
    torch.manual_seed(0)
    net = build_preset("tiny").eval()
    labels = condition_vectors("class", 10, classes=list(range(6)))
    z = sample_noise(3, range(6), (3, 16, 16))
    whole = to_uint8(generate(net, z, labels))
    parts = np.concatenate([to_uint8(generate(net, z[i:i + 2], labels[i:i + 2])) for i in range(0, 6, 2)])
    assert whole.dtype == np.uint8 and whole.shape == (6, 16, 16, 3)
    # Batched convolutions may round differently; images must agree to within one grey level.
    assert np.abs(whole.astype(int) - parts.astype(int)).max() <= 1


def test_generate_is_the_dmd2_call():
    torch.manual_seed(0)
    net = build_preset("tiny").eval()
    z = torch.randn(2, 3, 16, 16)
    c = condition_vectors("uniform", 10, count=2)
    torch.testing.assert_close(generate(net, z, c), net(80 * z, torch.tensor([80.0, 80.0]), c))


def test_to_uint8_range():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = to_uint8(x)
    assert out.shape == (1, 1, 5, 3) and out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_capture_during_generation_equals_plain_generation():
    torch.manual_seed(0)
    net = build_preset("tiny").eval()
    z = sample_noise(0, range(4), (3, 16, 16))
    c = condition_vectors("class", 10, classes=[0, 1, 2, 3])
    cap = ActivationCapture(net, ["encoder_bottleneck", "midblock"])
    img = cap.run(80 * z, torch.full((4,), 80.0), c)
    torch.testing.assert_close(img, generate(net, z, c))
    assert cap.activations["midblock"].shape == (4, 64, 4, 4)


def test_given_label_vectors_are_checked_to_the_last_row():
    # One vector is one row (not K copies of it); a NaN in any row, also past the first block of
    # rows checked at once, is refused.
    assert condition_vectors("vector", 4, weights=np.ones(4)).shape == (1, 4)
    w = np.ones((9000, 4), np.float32)
    w[8999, 2] = np.nan
    with pytest.raises(UserError, match="NaN or infinity"):
        condition_vectors("vector", 4, weights=w)
    with pytest.raises(UserError, match="length 3; the model takes 4"):
        condition_vectors("blend", 4, weights=np.ones((2, 3)))
