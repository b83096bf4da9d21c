"""Image sets (digits, MNIST IDX, CIFAR-10 batches, PNG folders) and the image networks (UNet, classifier)."""

import gzip
import json
import os
import pickle
import struct
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.nets.unet import EncoderClassifier, UNet
from toy_data.images import ImageSet, cifar10, digits, get_images, image_folder, mnist, restricted_pickle_load

from .conftest import DEVICE


def _scaled(levels: np.ndarray, n_levels: int) -> torch.Tensor:
    return torch.from_numpy(levels.astype(np.float64) / (n_levels - 1) * 2 - 1).float()


# -- digits --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_set():
    return digits()


def test_digits_on_the_exact_grid(digit_set):
    from sklearn.datasets import load_digits

    d = digit_set
    assert (len(d), d.event_shape, d.num_classes, d.n_levels) == (1797, (1, 8, 8), 10, 17)
    assert d.images.dtype == torch.float32 and d.labels.dtype == torch.long
    raw = load_digits()
    assert torch.equal(d.images, torch.from_numpy(raw.images[:, None] / 16 * 2 - 1).float())
    assert torch.equal(d.labels, torch.from_numpy(raw.target))
    levels = (d.images.double() + 1) / 2 * 16
    assert torch.equal(levels, levels.round()) and levels.min() == 0 and levels.max() == 16
    assert d.images.min() == -1 and d.images.max() == 1


def test_split_is_deterministic_disjoint_and_stratified(digit_set):
    train, test = digit_set.split(0.2, seed=0)
    again, _ = digit_set.split(0.2, seed=0)
    assert len(train) + len(test) == 1797 and torch.equal(train.images, again.images)
    assert (train.num_classes, test.num_classes, test.n_levels) == (10, 10, 17)
    counts = torch.bincount(digit_set.labels, minlength=10)
    assert torch.equal(torch.bincount(test.labels, minlength=10), (0.2 * counts.double()).round().long())

    def examples(d):
        return Counter(tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(d.images, d.labels))

    assert examples(train) + examples(test) == examples(digit_set)  # a partition of the examples
    with pytest.raises(ValueError, match="test_fraction"):
        digit_set.split(1.0)


def test_sample_draws_examples_with_their_labels(digit_set):
    g = torch.Generator(DEVICE).manual_seed(3)
    x, y = digit_set.sample(64, generator=g, return_labels=True)
    assert x.shape == (64, 1, 8, 8) and y.shape == (64,) and x.device.type == DEVICE.type
    g2 = torch.Generator(DEVICE).manual_seed(3)
    assert torch.equal(digit_set.sample(64, generator=g2, dtype=torch.float64), x.double())
    lookup = {tuple(a.flatten().tolist()): set() for a in digit_set.images}
    for a, b in zip(digit_set.images, digit_set.labels):
        lookup[tuple(a.flatten().tolist())].add(int(b))
    assert all(int(b) in lookup[tuple(a.flatten().tolist())] for a, b in zip(x.cpu(), y.cpu()))
    unlabelled = ImageSet("u", digit_set.images[:10])
    assert unlabelled.num_classes == 0 and unlabelled.sample(3).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="unlabelled"):
        unlabelled.sample(3, return_labels=True)


def test_get_images(digit_set):
    assert len(get_images("digits", split="train")) == 1438 and len(get_images("digits", split="test")) == 359
    with pytest.raises(ValueError, match="unknown image set 'nope'"):
        get_images("nope")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        get_images("mnist")
    with pytest.raises(ValueError, match="split"):
        get_images("digits", split="val")
    with pytest.raises(ValueError, match="8x8, not 28x28"):
        get_images("digits", image_size=28)


# -- MNIST ---------------------------------------------------------------------------------------------------------


def _write_idx(path, array: np.ndarray, gz: bool = False):
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def _mnist_arrays(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images, rng.integers(0, 10, size=n, dtype=np.uint8)


def test_mnist_from_idx_files_plain_and_gzipped(tmp_path):
    train_x, train_y = _mnist_arrays(7, 0)
    test_x, test_y = _mnist_arrays(3, 1)
    _write_idx(tmp_path / "train-images-idx3-ubyte", train_x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", train_y)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_x, gz=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", test_y, gz=True)
    for data, x, y in ((mnist(tmp_path), train_x, train_y), (get_images("mnist", tmp_path, split="test"), test_x,
                                                              test_y)):
        assert data.images.shape == (len(x), 1, 28, 28) and data.images.dtype == torch.float32
        assert torch.equal(data.images, _scaled(x[:, None], 256)) and torch.equal(data.labels, torch.from_numpy(
            y.astype(np.int64)))
        assert (data.num_classes, data.n_levels, data.event_shape) == (10, 256, (1, 28, 28))
    assert mnist(tmp_path).images.min() == -1 and mnist(tmp_path).images.max() == 1


def test_mnist_missing_or_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\], train-labels-idx1-ubyte"):
        mnist(tmp_path)
    x, y = _mnist_arrays(4, 0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, gz=True)
    with pytest.raises(FileNotFoundError, match=f"in {tmp_path} \\(missing: train-labels-idx1-ubyte\\)"):
        mnist(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y[:3])
    with pytest.raises(ValueError, match="3,\\) labels for 4 images"):
        mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="header says shape \\(9,\\)"):
        mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        mnist(tmp_path)


# -- CIFAR-10 ------------------------------------------------------------------------------------------------------


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {b"batch_label": b"fixture", b"labels": [int(v) for v in rng.integers(0, 10, n)], b"data": data,
            b"filenames": [b"f%d.png" % i for i in range(n)]}


def test_cifar10_from_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(2, i) for i in range(6)]
    for i, b in enumerate(batches[:5]):
        blob = pickle.dumps(b, protocol=3 if i % 2 else 4)
        if i % 2:  # the module name numpy < 2 writes, as in the real (Python 2) batches
            blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            assert b"numpy.core.multiarray\n" in blob
        (folder / f"data_batch_{i + 1}").write_bytes(blob)
    (folder / "test_batch").write_bytes(pickle.dumps(batches[5], protocol=4))
    data = cifar10(tmp_path)
    raw = np.concatenate([b[b"data"] for b in batches[:5]]).reshape(-1, 3, 32, 32)
    assert data.images.shape == (10, 3, 32, 32) and data.event_shape == (3, 32, 32)
    assert torch.equal(data.images, _scaled(raw, 256))
    assert data.labels.tolist() == sum((b[b"labels"] for b in batches[:5]), [])
    test = get_images("cifar10", folder, split="test")  # the batches folder itself works too
    assert torch.equal(test.images, _scaled(batches[5][b"data"].reshape(-1, 3, 32, 32), 256))
    assert (data.num_classes, data.n_levels, data.class_names[0]) == (10, 256, "airplane")
    os.remove(folder / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_1, data_batch_2, .*data_batch_5 in .*missing: "
                                                "data_batch_3\\)"):
        cifar10(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=4))
    with pytest.raises(ValueError, match=r"test_batch: refusing to load the global (posix|nt|os)\.system"):
        cifar10(tmp_path, train=False)
    assert not marker.exists()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR.")
    with pytest.raises(ValueError, match="refusing to load the global builtins.eval"):
        restricted_pickle_load(evil)
    assert not marker.exists()
    (tmp_path / "short.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="not a readable pickle"):
        restricted_pickle_load(tmp_path / "short.pkl")


# -- PNG folders ---------------------------------------------------------------------------------------------------


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_grayscale_rgb_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(3, 5, 5), dtype=np.uint8)
    gray[0, 0, :2] = (0, 255)
    for i, a in enumerate(gray):
        _png(tmp_path / "gray" / f"{i}.png", a)
    data = image_folder(tmp_path / "gray")
    assert data.images.shape == (3, 1, 5, 5) and data.labels is None and data.num_classes == 0
    assert torch.equal(data.images, _scaled(gray[:, None], 256)) and data.n_levels == 256

    import matplotlib.image

    rgb = rng.integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)
    for name, a in zip(("bird", "cat"), rgb):  # matplotlib writes RGBA with an opaque alpha
        (tmp_path / "lab" / name).mkdir(parents=True)
        matplotlib.image.imsave(tmp_path / "lab" / name / "a.png", a)
    lab = get_images("folder", tmp_path / "lab")
    assert lab.class_names == ("bird", "cat") and lab.labels.tolist() == [0, 1] and lab.num_classes == 2
    assert torch.equal(lab.images, _scaled(rgb.transpose(0, 3, 1, 2), 256))

    g3 = image_folder(tmp_path / "gray", channels=3)
    assert g3.images.shape == (3, 3, 5, 5) and torch.equal(g3.images[:, 1], data.images[:, 0])
    _png(tmp_path / "grey_rgb" / "a.png", np.repeat(gray[0][:, :, None], 3, axis=2))
    assert torch.equal(image_folder(tmp_path / "grey_rgb", channels=1).images[0], data.images[0])
    with pytest.raises(ValueError, match="a.png is a colour image"):
        image_folder(tmp_path / "lab" / "cat", channels=1)


def test_bad_image_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no PNG images in .*empty"):
        image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "nowhere")
    _png(tmp_path / "mixed" / "a.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "mixed" / "b.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="b.png is 5x4 pixels but .*a.png is 4x4"):
        image_folder(tmp_path / "mixed")
    with pytest.raises(ValueError, match="a.png is 4x4 pixels; expected image_size 8x8"):
        get_images("folder", tmp_path / "mixed", image_size=8)
    _png(tmp_path / "chan" / "a.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "chan" / "b.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="b.png has 3 channel\\(s\\) but .*a.png has 1"):
        image_folder(tmp_path / "chan")
    alpha = np.full((4, 4, 4), 255, np.uint8)
    alpha[0, 0, 3] = 10
    _png(tmp_path / "alpha" / "a.png", alpha)
    with pytest.raises(ValueError, match="a.png has transparent pixels"):
        image_folder(tmp_path / "alpha")
    _png(tmp_path / "both" / "a.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "both" / "k" / "b.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="both at the top"):
        image_folder(tmp_path / "both")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="x.png is not a readable PNG"):
        image_folder(tmp_path / "fake")
    with pytest.raises(ValueError, match="give root"):
        get_images("folder")


# -- networks ------------------------------------------------------------------------------------------------------


def _randomise(net):
    """Perturb every parameter, so zero-initialised layers no longer hide the inputs' effect."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(p))
    return net


TINY = dict(channels=8, groups=4, emb_dim=16)


@pytest.mark.parametrize(
    "kw, shape",
    [
        (dict(), (3, 1, 8, 8)),
        (dict(image_size=28, channel_mult=(1, 2, 2)), (2, 1, 28, 28)),  # 28 -> 14 -> 7
        (dict(image_size=28, channel_mult=(1, 1, 2, 2), attention_resolutions=(7, 4)), (2, 1, 28, 28)),  # 7 -> 4
        (dict(in_channels=3, image_size=32, channel_mult=(1, 2, 2), num_heads=2), (2, 3, 32, 32)),
        (dict(image_size=7, num_res_blocks=2, scale_shift=False, head_dim=4, prediction="v"), (2, 1, 7, 7)),
    ],
)
def test_unet_shapes_and_config(kw, shape):
    net = _randomise(UNet(**TINY, **kw)).to(DEVICE)
    x = torch.randn(shape, device=DEVICE)
    sigma = torch.rand(shape[0], device=DEVICE) + 0.01
    out = net(x, sigma)
    assert out.shape == shape and torch.isfinite(out).all()
    cfg = net.config()
    assert json.loads(json.dumps(cfg)) == cfg and cfg["name"] == "unet"
    twin = UNet(**{k: v for k, v in cfg.items() if k != "name"}).to(DEVICE)
    twin.load_state_dict(net.state_dict())
    torch.testing.assert_close(twin(x, sigma), out)


def test_unet_starts_at_zero_and_classifier_free_labels():
    x = torch.randn(4, 1, 8, 8, device=DEVICE)
    sigma = torch.full((4,), 0.5, device=DEVICE)
    net = UNet(**TINY, num_classes=10).to(DEVICE)
    assert torch.equal(net(x, sigma), torch.zeros_like(x))  # zero-initialised output
    net = _randomise(net)
    null = net(x, sigma)
    torch.testing.assert_close(net(x, sigma, 10), null)  # None is the null label K
    by_int = net(x, sigma, 3)
    torch.testing.assert_close(net(x, sigma, torch.full((4,), 3, device=DEVICE)), by_int)
    assert not torch.allclose(by_int, null)
    mixed = net(x, sigma, torch.tensor([3, 10, 3, 10], device=DEVICE))
    torch.testing.assert_close(mixed[::2], by_int[::2])
    torch.testing.assert_close(mixed[1::2], null[1::2])
    with pytest.raises(ValueError, match="outside"):
        net(x, sigma, 11)
    with pytest.raises(ValueError, match="labels must have shape"):
        net(x, sigma, torch.zeros(3, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(**TINY).to(DEVICE)(x, sigma, 3)


def test_unet_bad_input_and_arguments():
    net = UNet(**TINY).to(DEVICE)
    sigma = torch.ones(2, device=DEVICE)
    for shape in [(2, 1, 28, 28), (2, 3, 8, 8), (2, 64), (2, 1, 8, 9)]:
        with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 8, 8\)"):
            net(torch.zeros(shape, device=DEVICE), sigma)
    with pytest.raises(ValueError, match=r"sigma must have shape \(2,\)"):
        net(torch.zeros(2, 1, 8, 8, device=DEVICE), torch.ones((), device=DEVICE))
    for kw, match in [
        (dict(prediction="noise"), "unknown prediction .noise."),
        (dict(groups=3), "groups=3"),
        (dict(attention_resolutions=(5,)), r"attention_resolutions \[5\].*\[8, 4\]"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(num_heads=3), "num_heads=3"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_classes=-1), "num_classes"),
    ]:
        with pytest.raises(ValueError, match=match):
            UNet(**{**TINY, **kw})


def test_net_config_sizes_each_network_to_the_data():
    """nets.net_config: a config build_net turns into a network taking the data's shape; mismatches named."""
    from scoresde.nets import build_net, net_config

    sigma = torch.ones(3, device=DEVICE)
    for kind, shape, kw, out in [
        ("unet", (3, 8, 8), dict(width=8, emb_dim=16, prediction="v", num_classes=10), (3, 8, 8)),
        ("mlp", (5,), dict(width=16, depth=1), (5,)),
        ("classifier", (2,), dict(num_classes=4), (4,)),
    ]:
        config = net_config(kind, shape, sigma_data=0.5, **kw)
        net = build_net(config).to(DEVICE)
        labels = torch.arange(3, device=DEVICE) if kind == "unet" else None
        y = net(torch.zeros(3, *shape, device=DEVICE), sigma, **({"labels": labels} if labels is not None else {}))
        assert y.shape == (3, *out) and {k: net.config()[k] for k in config} == config
    for kind, shape, kw, match in [("mlp", (1, 8, 8), {}, r"takes vectors.*\(1, 8, 8\): images take --net unet"),
                                   ("unet", (1, 8, 9), {}, r"square images.*\(1, 8, 9\)"),
                                   ("classifier", (2,), {}, "labelled data"), ("resnet", (2,), {}, "'resnet'")]:
        with pytest.raises(ValueError, match=match):
            net_config(kind, shape, **kw)


def _dsm_loss(net, x0, sigma, eps):
    a, s = (1 - sigma**2).sqrt()[:, None, None, None], sigma[:, None, None, None]
    return ((net(a * x0 + s * eps, sigma) - eps) ** 2).mean()


@pytest.mark.parametrize("kw, shape", [(dict(), (32, 1, 8, 8)), (dict(in_channels=3, image_size=32), (8, 3, 32, 32))])
def test_a_few_adam_steps_lower_the_dsm_loss(kw, shape):
    g = torch.Generator(DEVICE).manual_seed(0)
    net = UNet(**TINY, **kw).to(DEVICE)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    blocks = torch.rand((4, shape[1], 2, 2), generator=g, device=DEVICE).round() * 2 - 1
    x0 = torch.nn.functional.interpolate(blocks, size=shape[2:]).repeat(shape[0] // 4, 1, 1, 1)  # 4 blocky images

    def batch():
        return (torch.rand(shape[0], generator=g, device=DEVICE) * 0.9 + 0.05,
                torch.randn(shape, generator=g, device=DEVICE))

    held_out = batch()
    with torch.no_grad():
        before = _dsm_loss(net, x0, *held_out).item()
    for _ in range(25):
        loss = _dsm_loss(net, x0, *batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = _dsm_loss(net, x0, *held_out).item()
    assert after < 0.6 * before, (before, after)


def test_encoder_classifier():
    clf = _randomise(EncoderClassifier(num_classes=10, **TINY)).to(DEVICE)
    x = torch.randn(5, 1, 8, 8, device=DEVICE, requires_grad=True)
    sigma = torch.rand(5, device=DEVICE) + 0.1
    logits = clf(x, sigma)
    assert logits.shape == (5, 10)
    (grad,) = torch.autograd.grad(logits.log_softmax(-1)[:, 3].sum(), x)  # what classifier guidance needs
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    cfg = clf.config()
    assert cfg["name"] == "encoder_classifier" and json.loads(json.dumps(cfg)) == cfg
    big = EncoderClassifier(num_classes=10, in_channels=3, image_size=32, channel_mult=(1, 2, 2), **TINY).to(DEVICE)
    assert big(torch.zeros(2, 3, 32, 32, device=DEVICE), torch.ones(2, device=DEVICE)).shape == (2, 10)
    with pytest.raises(ValueError, match="expected images"):
        clf(torch.zeros(2, 1, 28, 28, device=DEVICE), torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="num_classes"):
        EncoderClassifier(num_classes=1)
