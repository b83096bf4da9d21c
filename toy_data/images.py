"""Image sets as (N, C, H, W) float32 tensors in [-1, 1] with integer labels.

scikit-learn's 8 x 8 digits are built in; MNIST (IDX files), CIFAR-10 (python batches) and folders of PNGs are
read from local files, nothing is downloaded. Pixel values k = 0..n_levels-1 map to k / (n_levels - 1) * 2 - 1.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ImageSet",
    "digits",
    "mnist",
    "cifar10",
    "image_folder",
    "read_png",
    "get_images",
    "read_idx",
    "IMAGE_SETS",
    "CIFAR10_CLASSES",
    "restricted_pickle_load",
]

IMAGE_SETS = ("digits", "mnist", "cifar10", "folder")
MAX_PIXELS = 1 << 24  # per PNG (4096 x 4096): a larger one is refused before it is decoded
MAX_IDX_BYTES = 1 << 30  # per IDX file, decompressed (MNIST's training images: 47 MB)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _scale(levels: np.ndarray, n_levels: int) -> Tensor:
    """Integer levels 0..n_levels-1 -> float32 in [-1, 1], through a table computed in float64 (rounded once)."""
    table = (np.arange(n_levels, dtype=np.float64) / (n_levels - 1) * 2 - 1).astype(np.float32)
    levels = np.asarray(levels)
    return torch.from_numpy(table[levels if levels.dtype == np.uint8 else levels.astype(np.intp)])


class ImageSet:
    """Images of shape (N, C, H, W) in [-1, 1], optional labels (N,), with the sample() interface of the 2D sets.

    `num_classes` is 0 for an unlabelled set; `n_levels` is the number of intensity levels of the source pixels
    (17 for digits, 256 for 8-bit images), for dequantisation and bits per dimension.
    """

    def __init__(
        self,
        name: str,
        images: Tensor,
        labels: Tensor | None = None,
        num_classes: int | None = None,
        n_levels: int = 256,
        class_names: tuple[str, ...] | None = None,
    ):
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor of shape (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels is not None:
            if labels.shape != images.shape[:1]:
                raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
            labels = labels.long()
            if num_classes is None:
                num_classes = int(labels.max()) + 1 if len(labels) else 0
            if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
                raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, "
                                 f"{int(labels.max())}]")
        self.name, self.images, self.labels = name, images, labels
        self.num_classes = 0 if labels is None else int(num_classes)
        self.n_levels, self.class_names = int(n_levels), class_names
        self.event_shape = tuple(images.shape[1:])
        self._on_device: dict[torch.device, tuple[Tensor, Tensor | None]] = {}

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (f"ImageSet({self.name!r}, n={len(self)}, event_shape={self.event_shape}, "
                f"num_classes={self.num_classes}, n_levels={self.n_levels})")

    def _tensors(self, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """The images and labels on `device`, copied there once."""
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device == self.images.device:
            return self.images, self.labels
        if device not in self._on_device:
            labels = None if self.labels is None else self.labels.to(device)
            self._on_device[device] = (self.images.to(device), labels)
        return self._on_device[device]

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """n examples drawn uniformly with replacement, shape (n, C, H, W); optionally their labels too."""
        if return_labels and self.labels is None:
            raise ValueError(f"image set {self.name!r} is unlabelled; return_labels=True needs labels")
        if generator is not None and device is None:
            device = generator.device
        device = torch.device("cpu") if device is None else torch.device(device)
        idx = torch.randint(len(self), (n,), generator=generator,
                            device=generator.device if generator is not None else "cpu").to(device)
        images, labels = self._tensors(device)
        x = images[idx].to(dtype)
        return (x, labels[idx]) if return_labels else x

    def subset(self, index: Tensor, name: str | None = None) -> ImageSet:
        """The examples at `index` (a (M,) long tensor), keeping num_classes and n_levels."""
        return ImageSet(name or self.name, self.images[index], None if self.labels is None else self.labels[index],
                        self.num_classes, self.n_levels, self.class_names)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """A deterministic (train, test) split: stratified by label (round(test_fraction * n_k) of each class
        go to test), or a fixed permutation for an unlabelled set."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        g = torch.Generator().manual_seed(seed)
        groups = [torch.arange(len(self))] if self.labels is None else [
            (self.labels == k).nonzero().flatten() for k in range(self.num_classes)]
        train, test = [], []
        for members in groups:
            members = members[torch.randperm(len(members), generator=g)]
            k = round(test_fraction * len(members))
            test.append(members[:k])
            train.append(members[k:])
        train_idx, test_idx = torch.cat(train).sort().values, torch.cat(test).sort().values
        return self.subset(train_idx, f"{self.name}[train]"), self.subset(test_idx, f"{self.name}[test]")


# -- scikit-learn digits -------------------------------------------------------------------------------------------


def digits() -> ImageSet:
    """scikit-learn's 1797 handwritten digits: (1797, 1, 8, 8), 17 intensity levels 0..16, labels 0..9."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits image set ships with scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    return ImageSet("digits", _scale(d.images[:, None], 17), torch.from_numpy(d.target).long(), num_classes=10,
                    n_levels=17, class_names=tuple(str(k) for k in range(10)))


# -- MNIST (IDX files) ---------------------------------------------------------------------------------------------


def _find_files(dirs: list[Path], names: tuple[str, ...], what: str, gz: bool = True) -> list[Path]:
    """Each name (or name.gz) from the first directory that has them all; else a FileNotFoundError saying where."""
    best: tuple[Path, list[str]] | None = None
    for d in dirs:
        found, missing = [], []
        for name in names:
            hits = [d / n for n in ((name, name + ".gz") if gz else (name,)) if (d / n).is_file()]
            if hits:
                found.append(hits[0])
            else:
                missing.append(name)
        if not missing:
            return found
        if best is None or len(missing) < len(best[1]):
            best = (d, missing)
    d, missing = best
    want = ", ".join(n + ("[.gz]" if gz else "") for n in names)
    raise FileNotFoundError(f"{what}: put {want} in {d} (missing: {', '.join(missing)})")


def read_idx(path: str | Path) -> np.ndarray:
    """An unsigned-byte IDX array (LeCun's MNIST format), optionally gzipped."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile, a truncated stream, ...
        what = "a readable gzip file" if path.suffix == ".gz" else "readable"
        raise ValueError(f"{path} is not {what}: {e}") from None
    if len(data) > MAX_IDX_BYTES:
        raise ValueError(f"{path} holds more than {MAX_IDX_BYTES >> 20} MB of data; not an image set this loads")
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic bytes {data[:4].hex() or 'missing'}, "
                         "expected 000008xx)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]) if len(data) >= 4 + 4 * ndim else None
    body = data[4 + 4 * ndim:]
    if dims is None or len(body) != int(np.prod(dims)):
        raise ValueError(f"{path}: the IDX header says shape {dims} ({int(np.prod(dims or (0,)))} bytes) but the "
                         f"file has {len(body)} bytes of data")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def mnist(root: str | Path, train: bool = True) -> ImageSet:
    """MNIST (or Fashion-MNIST) from IDX files in `root` (or torchvision's root/MNIST/raw): (N, 1, 28, 28)."""
    root = Path(root)
    prefix = "train" if train else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    images_path, labels_path = _find_files([root, root / "MNIST" / "raw"], names, "MNIST")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected images of shape (N, H, W), got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"{labels_path} has {labels.shape} labels for {images.shape[0]} images in {images_path}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    return ImageSet("mnist" if train else "mnist[test]", _scale(images[:, None], 256),
                    torch.from_numpy(labels.astype(np.int64)), num_classes=10, n_levels=256,
                    class_names=tuple(str(k) for k in range(10)))


# -- CIFAR-10 (python batches, read with a restricted unpickler) ---------------------------------------------------


@functools.lru_cache(maxsize=None)
def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, bytes, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        allowed = _numpy_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name}: only numpy arrays, dicts, lists, strings and "
                "numbers are allowed in a data pickle")
        return allowed[(module, name)]


def restricted_pickle_load(path: str | Path, encoding: str = "bytes"):
    """Unpickle a data file without running code from it: numpy's array-reconstruction globals only."""
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, encoding=encoding).load()
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: {e}") from None
        except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"{path} is not a readable pickle: {type(e).__name__}: {e}") from None


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = restricted_pickle_load(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict with b'data' and b'labels', got {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got "
                         f"{getattr(data, 'dtype', type(data).__name__)} {shape}")
    labels = np.asarray(labels, dtype=np.int64) if labels is not None else None
    if labels is None or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: b'labels' must list one label per image ({data.shape[0]})")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be 0..9, found [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10(root: str | Path, train: bool = True) -> ImageSet:
    """CIFAR-10 from the python batches in root/cifar-10-batches-py (or root itself): (N, 3, 32, 32)."""
    root = Path(root)
    names = tuple(f"data_batch_{i}" for i in range(1, 6)) if train else ("test_batch",)
    paths = _find_files([root / "cifar-10-batches-py", root], names, "CIFAR-10", gz=False)
    batches = [_cifar_batch(p) for p in paths]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return ImageSet("cifar10" if train else "cifar10[test]", _scale(images, 256), torch.from_numpy(labels),
                    num_classes=10, n_levels=256, class_names=CIFAR10_CLASSES)


# -- a folder of PNGs ----------------------------------------------------------------------------------------------


def _is_png(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() == ".png"


def _read_png(path: Path) -> np.ndarray:
    """An 8-bit PNG as (H, W, C) uint8 with C = 1 (grayscale) or 3 (RGB); fully opaque alpha is dropped."""
    from PIL import Image  # Pillow is a dependency of matplotlib

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:  # checked before decoding: a small file may claim a huge image
                raise ValueError(f"{path} is {im.width} x {im.height} pixels, more than the {MAX_PIXELS:,} this "
                                 "loader decodes (a decompression bomb, or not a small training image)")
            if im.format != "PNG":
                raise ValueError(f"{path} is a {im.format} image, not a PNG")
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                raise ValueError(f"{path}: PNG mode {im.mode!r} is not supported; use 8-bit grayscale or RGB")
            a = np.asarray(im)
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path} is not a readable PNG: {e}") from None
    a = a[:, :, None] if a.ndim == 2 else a
    if a.shape[2] in (2, 4):
        if (a[:, :, -1] != 255).any():
            raise ValueError(f"{path} has transparent pixels; save it without an alpha channel")
        a = a[:, :, :-1]
    return a


def read_png(path: str | Path) -> Tensor:
    """One 8-bit PNG as a float32 (C, H, W) tensor in [-1, 1], C = 1 (grayscale) or 3 (RGB)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such PNG: {path}")
    return _scale(_read_png(path).transpose(2, 0, 1), 256)


def image_folder(root: str | Path, image_size: int | None = None, channels: int | None = None) -> ImageSet:
    """All *.png in `root` (unlabelled), or in its subfolders (labelled by subfolder, in sorted order).

    Every image must have the same height and width (image_size x image_size if given) and the same number of
    channels; `channels=1` turns RGB images whose R = G = B into grayscale, `channels=3` repeats grayscale.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    top = sorted(p for p in root.iterdir() if _is_png(p))
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and any(_is_png(p) for p in d.iterdir()))
    if top and subdirs:
        raise ValueError(f"{root} has PNGs both at the top ({top[0].name}, ...) and in subfolders "
                         f"({subdirs[0].name}/, ...); put them all at the top (unlabelled) or all in one "
                         "subfolder per class (labelled)")
    if not top and not subdirs:
        raise ValueError(f"no PNG images in {root} or its subfolders: put *.png there, or one subfolder of "
                         "*.png per class for labels")
    if top:
        files, labels, class_names = top, None, None
    else:
        files, labels = [], []
        for k, d in enumerate(subdirs):
            pngs = sorted(p for p in d.iterdir() if _is_png(p))
            files += pngs
            labels += [k] * len(pngs)
        class_names = tuple(d.name for d in subdirs)
    arrays = []
    for path in files:
        a = _read_png(path)
        h, w, c = a.shape
        if image_size is not None and (h, w) != (image_size, image_size):
            raise ValueError(f"{path} is {h}x{w} pixels; expected image_size {image_size}x{image_size}")
        if arrays and (h, w) != arrays[0].shape[:2]:
            raise ValueError(f"{path} is {h}x{w} pixels but {files[0]} is {arrays[0].shape[0]}x"
                             f"{arrays[0].shape[1]}; all images must have the same size")
        if channels == 1 and c == 3:
            if (a[:, :, 0:1] != a).any():
                raise ValueError(f"{path} is a colour image (R, G, B differ); channels=1 needs grayscale images")
            a = a[:, :, :1]
        elif channels == 3 and c == 1:
            a = np.repeat(a, 3, axis=2)
        elif channels is None and arrays and c != arrays[0].shape[2]:
            raise ValueError(f"{path} has {c} channel(s) but {files[0]} has {arrays[0].shape[2]}; pass channels=1 "
                             "or channels=3 to convert")
        arrays.append(a)
    images = _scale(np.stack(arrays).transpose(0, 3, 1, 2), 256)
    return ImageSet(root.name or str(root), images, None if labels is None else torch.tensor(labels),
                    num_classes=None if labels is None else len(subdirs), n_levels=256, class_names=class_names)


# -- by name, for the CLI ------------------------------------------------------------------------------------------


def get_images(name: str, root: str | Path | None = None, split: str | None = None,
               image_size: int | None = None) -> ImageSet:
    """An image set by name: "digits" (built in), "mnist", "cifar10" or "folder" (these read local files in root).

    split=None gives the whole training data (all 1797 digits, MNIST/CIFAR-10 train files, the whole folder);
    "train"/"test" give disjoint parts: the official test files for MNIST/CIFAR-10, a fixed stratified 80/20
    split (ImageSet.split()) for digits and folders.
    """
    if name not in IMAGE_SETS:
        raise ValueError(f"unknown image set {name!r}; choose from {', '.join(IMAGE_SETS)}")
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    if name == "digits":
        data = digits()
    else:
        if root is None:
            where = {
                "mnist": "a folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] "
                         "(and t10k-* for test)",
                "cifar10": "a folder with cifar-10-batches-py/ (data_batch_1..5, test_batch)",
                "folder": "a folder of *.png (or one subfolder of *.png per class)",
            }[name]
            raise ValueError(f"image set {name!r} is read from local files: give root = {where}")
        if name != "folder":
            data = (mnist if name == "mnist" else cifar10)(root, train=split != "test")
        else:
            data = image_folder(root, image_size)
    if split is not None and name in ("digits", "folder"):
        data = data.split()[0 if split == "train" else 1]
    if image_size is not None and data.event_shape[1:] != (image_size, image_size):
        raise ValueError(f"image set {name!r} has images of size {data.event_shape[1]}x{data.event_shape[2]}, "
                         f"not {image_size}x{image_size}")
    return data
