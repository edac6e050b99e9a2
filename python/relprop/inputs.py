"""Reading MODEL and INPUTS as the command line and the streaming runs do: bundled model
names and model files (:func:`load_model`), arrays and image files (:func:`load_inputs`,
:func:`read_images`; see :mod:`relprop.cli` for the conversions), and the labels that come with
them (:func:`load_labels`).  A mistake in what the user gave is a :class:`UsageError`
(:func:`user_input` turns the loaders' and checks' errors into one).
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

from ._validate import float_dtype


class UsageError(ValueError):
    """A mistake in what the user gave a command: an argument, a file, INPUTS, a missing
    optional package, a cluster that cannot run the job.  ``relprop`` prints it as one line,
    ``relprop: error: ...``, and exits with status 2; any other exception is a bug and keeps
    its traceback."""


@contextlib.contextmanager
def user_input(prefix=""):
    """A step that reads or checks what the user gave (a ``with`` block or a decorated
    function): the ValueError, TypeError, OSError or ImportError it raises (relprop's argument
    checks, the loaders' refusals, a missing file or optional package) becomes a
    :class:`UsageError` with the message ``prefix + message``.  :func:`load_model`,
    :func:`load_inputs` and :func:`load_labels` raise their errors so."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, TypeError, OSError, ImportError) as exc:
        raise UsageError(prefix + (" ".join(str(exc).split()) or type(exc).__name__)) from exc


#: Image file types read from an INPUTS folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
BUNDLED_MODELS = ("digits_cnn", "digits_resnet", "digits_mlp")
#: Default chunk: about this many bytes of (float) inputs, at most MAX_CHUNK samples.
CHUNK_BYTES = 16 << 20
MAX_CHUNK = 4096
#: Heatmap PNGs are upscaled (nearest neighbour) to about this many pixels on their long side.
HEATMAP_PIXELS = 128


@user_input()
def load_model(spec, input_shape=None):
    """A network from a bundled model name, a relprop ``.npz`` or an ``.onnx`` file.

    ``input_shape`` (a tuple) is required for an ``.npz`` saved without one, and must agree
    with the model's own when it has one.
    """
    from .graph import load

    if spec in BUNDLED_MODELS:
        from . import models

        net = getattr(models, spec)()
    else:
        if not os.path.exists(spec):
            raise ValueError(f"{spec}: no such model file")
        if os.path.isdir(spec):
            raise ValueError(f"{spec}: is a folder, not a model file")
        suffix = os.path.splitext(spec)[1].lower()
        if suffix == ".npz":
            net = load(spec)
        elif suffix == ".onnx":
            from .importers import from_onnx

            net = from_onnx(spec)
        else:
            raise ValueError(f"{spec}: unsupported model file type {suffix or '(none)'!r}; use a "
                             "relprop .npz (net.save) or an .onnx file (for PyTorch: "
                             "relprop.from_torch(module, shape).save(path))")
    if input_shape is not None:
        if net.input_shape is not None and tuple(input_shape) != net.input_shape:
            raise ValueError(f"--input-shape {tuple(input_shape)} disagrees with the model's "
                             f"input shape {net.input_shape}")
        net = net.with_input_shape(input_shape)
    return net


class Normalization:
    """The per-channel normalization ``(x - mean) / std`` of images read as pixel / 255 (what
    ``torchvision.transforms.Normalize`` applies after ``ToTensor``; ImageNet models take
    ``mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)``).  Values "in pixel units" are on
    the pixel / 255 scale, before the normalization.

    Parameters
    ----------
    mean, std : sequence of float
        One value per channel (or one for all), ``std > 0``.
    channels : int
        The images' channels.

    Raises
    ------
    ValueError
        Not one value per channel (or one), non-finite values, or ``std <= 0``.
    """

    def __init__(self, mean, std, channels):
        vals = []
        for name, v in (("mean", mean), ("std", std)):
            a = np.asarray(v, dtype=np.float64).reshape(-1)
            if a.size == 1:
                a = np.repeat(a, channels)
            if a.size != channels or not np.isfinite(a).all():
                raise ValueError(f"{name} must be {channels} finite value(s), one per channel "
                                 f"of the model's input, got {_floats(v)}")
            vals.append(a)
        if (vals[1] <= 0).any():
            raise ValueError(f"std must be positive, got {_floats(vals[1])}")
        self.mean, self.std = vals

    @staticmethod
    def _col(v):
        return v.reshape(-1, 1, 1)

    def __call__(self, x):
        """Images ``(..., c, h, w)`` in pixel units, normalized (in their dtype)."""
        x = np.asarray(x)
        dt = x.dtype if x.dtype.kind == "f" else np.float64
        return ((x - self._col(self.mean).astype(dt)) / self._col(self.std).astype(dt))

    def pixels(self, x):
        """Normalized images ``(..., c, h, w)`` back in pixel units (for display)."""
        x = np.asarray(x, dtype=np.float64)
        return x * self._col(self.std) + self._col(self.mean)

    def bounds(self, v):
        """A bound in pixel units (a number, or one per channel) as a per-channel list on the
        normalized images: ``(v - mean) / std``."""
        v = np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), self.mean.shape)
        return ((v - self.mean) / self.std).tolist()

    def identity(self):
        """What a resumed run must find unchanged."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def describe(self):
        return (f"normalized per channel as (pixel / 255 - mean) / std with mean="
                f"{_floats(self.mean)}, std={_floats(self.std)}")


def _floats(v):
    return ",".join(f"{x:.6g}" for x in np.ravel(v))


def normalization(mean, std, input_shape):
    """A :class:`Normalization` for images of ``input_shape`` ``(c, h, w)``, or None when both
    ``mean`` and ``std`` are None.

    Raises
    ------
    ValueError
        Only one of them, a model that does not take images, or bad values.
    """
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError("mean and std go together: give both (std=1 or mean=0 for one alone)")
    _check_image_shape(input_shape)
    return Normalization(mean, std, input_shape[0])


def _image_files(folder):
    files = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return [os.path.join(folder, f) for f in files]


#: Pillow image modes, in words (for the conversion warnings).
_MODES = {"L": "grayscale", "RGB": "RGB", "RGBA": "RGB with alpha", "LA": "grayscale with alpha",
          "P": "palette", "PA": "palette with alpha", "1": "1-bit", "I": "32-bit integer",
          "I;16": "16-bit grayscale", "F": "32-bit float", "CMYK": "CMYK", "YCbCr": "YCbCr"}


def _mode(mode):
    return f"{_MODES[mode]} ({mode})" if mode in _MODES and _MODES[mode] != mode else mode


def _warn(message):
    print(f"relprop: warning: {message}", file=sys.stderr)


def _some(items, k=3):
    return ", ".join(items[:k]) + (f", ... ({len(items) - k} more)" if len(items) > k else "")


def _refusal(path, im, input_shape):
    c, h, w = input_shape
    wanted = f"{w}x{h} {_mode('L' if c == 1 else 'RGB')}"
    return ValueError(f"{path}: a {im.size[0]}x{im.size[1]} {_mode(im.mode)} image, but the "
                      f"model takes {input_shape} = {wanted}; --strict refuses to convert it "
                      "(leave out --strict to convert, or give INPUTS as a .npy array)")


def _check_image_shape(input_shape):
    """Raise unless images can feed a model of ``input_shape``; return Pillow's modules."""
    if input_shape is None or len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ValueError(f"images can feed models with input shape (1, h, w) or (3, h, w); this "
                         f"model takes {input_shape}: give INPUTS as a .npy array instead")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install pillow "
                          "(or pip install 'relprop[plot]')") from None
    return Image, UnidentifiedImageError


def check_images(paths, input_shape):
    """Raise ValueError (as ``read_images(..., strict=True)``) for the first image whose
    channels or size differ from ``input_shape``, reading only the files' headers."""
    Image, Unidentified = _check_image_shape(input_shape)
    c, h, w = input_shape
    for path in paths:
        try:
            with Image.open(path) as im:
                if im.mode != ("L" if c == 1 else "RGB") or im.size != (w, h):
                    raise _refusal(path, im, input_shape)
        except (Unidentified, OSError) as exc:
            raise ValueError(f"{path}: not a readable image ({exc})") from None


def read_images(paths, input_shape, strict=False, warn=_warn, conversions=None, mean=None,
                std=None):
    """Images as a float32 batch ``(n, *input_shape)``: pixel / 255 in ``[0, 1]``, or with
    ``mean`` and ``std`` ``(pixel / 255 - mean) / std`` per channel (see :mod:`relprop.cli`).

    Parameters
    ----------
    paths : list of str
    input_shape : tuple
        ``(1, h, w)`` (grayscale) or ``(3, h, w)`` (RGB).
    strict : bool
        Refuse (ValueError) an image whose channels or size differ from ``input_shape`` instead
        of converting it.
    warn : callable
        Called with one message per kind of conversion (a source mode converted to the model's,
        or a resize), naming the images; by default printed to stderr as ``relprop: warning:``.
    conversions : dict, optional
        Collect the conversions here instead of warning (for reading in chunks: one
        :func:`warn_conversions` at the end names them all).
    mean, std : sequence of float, optional
        The per-channel normalization (:class:`Normalization`; both or neither), e.g.
        torchvision's ImageNet ``(0.485, 0.456, 0.406)``, ``(0.229, 0.224, 0.225)``.

    Raises
    ------
    ValueError
        A model that does not take images, an unreadable image, (``strict``) an image that
        would need converting, or a bad ``mean``/``std``.
    ImportError
        Pillow is not installed.
    """
    Image, Unidentified = _check_image_shape(input_shape)
    norm = normalization(mean, std, input_shape)
    c, h, w = input_shape
    mode = "L" if c == 1 else "RGB"
    out = np.empty((len(paths), c, h, w), dtype=np.float32)
    seen = {} if conversions is None else conversions
    for i, path in enumerate(paths):
        name = os.path.basename(path)
        try:
            with Image.open(path) as im:
                if strict and (im.mode != mode or im.size != (w, h)):
                    raise _refusal(path, im, input_shape)
                if im.mode != mode:
                    seen.setdefault(("mode", im.mode), []).append(name)
                    im = im.convert(mode)
                if im.size != (w, h):
                    seen.setdefault(("size",), []).append(f"{name} ({im.size[0]}x{im.size[1]})")
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (Unidentified, OSError) as exc:
            raise ValueError(f"{path}: not a readable image ({exc})") from None
        out[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    if conversions is None:
        warn_conversions(seen, input_shape, warn)
    return out if norm is None else norm(out)


def warn_conversions(conversions, input_shape, warn=_warn):
    """One warning per kind of conversion that :func:`read_images` collected."""
    c, h, w = input_shape
    mode = "L" if c == 1 else "RGB"
    for key, names in conversions.items():
        if key[0] == "mode":
            warn(f"converted {len(names)} image(s) from {_mode(key[1])} to {_mode(mode)}, as "
                 f"the model takes {input_shape}: {_some(names)} (--strict refuses instead)")
    resized = conversions.get(("size",))
    if resized:
        warn(f"resized {len(resized)} image(s) to {w}x{h} (bilinear), as the model takes "
             f"{input_shape}: {_some(resized)} (--strict refuses instead)")


@user_input()
def load_inputs(spec, net, strict=False, mean=None, std=None):
    """``(x, names)``: the INPUTS of a subcommand as an array ``(n, *input_shape)`` and a name
    per sample (image file stems, or zero-padded indices).  Arrays are memory-mapped.  Images
    that need converting to the model's input shape are converted with a warning on stderr, or
    refused with ``strict``, and normalized with ``mean`` and ``std`` (see
    :func:`read_images`); an array is refused with them (it is given as the model takes it)."""
    _only_images(spec, mean, std)
    if spec == "digits":
        from .models import digits_data

        flat = net.input_shape is not None and len(net.input_shape) == 1
        x = digits_data("test", flat=flat)[0]
    elif not os.path.exists(spec):
        raise ValueError(f"{spec}: no such file or folder")
    elif _is_images(spec):
        paths = _image_files(spec) if os.path.isdir(spec) else [spec]
        names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        return read_images(paths, net.input_shape, strict, mean=mean, std=std), names
    elif spec.lower().endswith(".npy"):
        try:
            x = np.load(spec, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{spec}: not a readable .npy array ({exc})") from None
    elif spec.lower().endswith(".npz"):
        try:
            with np.load(spec, allow_pickle=False) as d:
                if "x" not in d.files:
                    raise ValueError(f"{spec}: an .npz of inputs needs an array 'x'; it has "
                                     f"{d.files}")
                x = d["x"]
        except (OSError, EOFError) as exc:
            raise ValueError(f"{spec}: not a readable .npz file ({exc})") from None
    else:
        raise ValueError(f"{spec}: INPUTS must be a .npy/.npz array, an image, a folder of "
                         "images or 'digits'")
    if net.input_shape is not None and x.shape == net.input_shape:
        x = x[None]
    if net.input_shape is not None and x.shape[1:] != net.input_shape:
        raise ValueError(f"{spec}: INPUTS has shape {x.shape} but the model expects "
                         f"(n, {', '.join(map(str, net.input_shape))})")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{spec}: INPUTS must be a non-empty batch (n, ...), got shape {x.shape}")
    float_dtype(x.dtype, f"{spec}: INPUTS")
    width = len(str(len(x) - 1))
    return x, [f"{i:0{width}d}" for i in range(len(x))]


def _is_images(spec):
    """Whether INPUTS ``spec`` names an image file or a folder (of images)."""
    spec = os.fspath(spec)
    return spec != "digits" and os.path.exists(spec) and (
        os.path.isdir(spec) or spec.lower().endswith(IMAGE_SUFFIXES))


def _only_images(spec, mean, std):
    """Refuse ``mean``/``std`` for INPUTS that are not images."""
    if (mean is not None or std is not None) and not _is_images(spec):
        raise ValueError(f"{spec}: mean and std normalize images (pixel / 255); an array or "
                         "'digits' is given as the model takes it (normalize it yourself)")


@user_input()
def load_labels(spec, n, n_classes=None):
    """The labels that come with INPUTS: the bundled digits' or an .npz's ``y`` (else None),
    checked: ``n`` ints (one per sample of INPUTS), in ``0..n_classes - 1`` when given."""
    if spec == "digits":
        from .models import digits_data

        y = digits_data("test")[1]
    elif spec.lower().endswith(".npz"):
        with np.load(spec, allow_pickle=False) as d:
            if "y" not in d.files:
                return None
            y = d["y"]
    else:
        return None
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise TypeError(f"{spec}: labels 'y' must be a 1-d array of ints (one class per sample), "
                        f"got dtype {y.dtype} and shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"{spec}: {len(y)} labels 'y' for {n} samples 'x'; give one per sample")
    if n_classes is not None and len(y) and not 0 <= y.min() <= y.max() < n_classes:
        bad = int(y[(y < 0) | (y >= n_classes)][0])
        raise ValueError(f"{spec}: label {bad} is out of range for {n_classes} outputs "
                         f"(valid: 0..{n_classes - 1})")
    return y


def load_class_names(path, net):
    """The class names of ``path``, a text file of one name per line in the order of the
    model's outputs (surrounding spaces and trailing blank lines dropped), as a list.

    Raises
    ------
    UsageError
        A missing or unreadable file (not UTF-8 text), an empty name, or not one name per
        output of ``net``.
    """
    with user_input(f"--classes {path}: "):
        with open(path, encoding="utf-8") as fh:
            names = [line.strip() for line in fh.read().splitlines()]
        while names and not names[-1]:
            names.pop()
        if "" in names:
            raise ValueError(f"line {names.index('') + 1} is empty; give one class name per "
                             "line")
        n_out = None if net.output_shape is None else int(np.prod(net.output_shape))
        if n_out is not None and len(names) != n_out:
            raise ValueError(f"{len(names)} class name(s), but the model has {n_out} outputs; "
                             "give one name per output, in order")
    return names


def class_label(k, class_names):
    """Class ``k`` as shown: ``"226 briard"`` with names, else ``"226"`` (what is not a class
    index, a "seed" target, as it is)."""
    if class_names is None or not isinstance(k, (int, np.integer)):
        return str(k)
    return f"{k} {class_names[k]}"


def _heatmap_scale(input_shape):
    return max(1, HEATMAP_PIXELS // max(input_shape[-2:]))


class NpyFile:
    """Rows of a ``.npy`` array read on demand with positional reads, never memory-mapped, so
    a process reading it holds only the rows it asked for.

    Supports ``len``, ``shape``, ``dtype``, ``ndim``, :meth:`read` and basic indexing with a
    slice on the first axis (so :func:`dask.array.from_array` can wrap it); pickles as its path
    and header.

    Raises
    ------
    ValueError
        Not a readable ``.npy`` file, or an object array.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{self.path}: not a readable .npy array ({exc})") from None
        if not isinstance(mm, np.memmap):  # a 0-size array is not mapped
            self._array = np.asarray(mm)
            self.offset = None
        else:
            fortran = mm.ndim > 1 and mm.flags.f_contiguous and not mm.flags.c_contiguous
            self.offset = None if fortran else int(mm.offset)
            self._array = mm if fortran else None  # Fortran order: rows are not contiguous
        self.shape = tuple(int(s) for s in mm.shape)
        self.dtype = mm.dtype
        self.ndim = len(self.shape)
        st = os.stat(self.path)
        self._stamp = (st.st_size, st.st_mtime_ns)
        del mm

    def __len__(self):
        if not self.ndim:
            raise TypeError(f"{self.path}: len() of a 0-dimensional array")
        return self.shape[0]

    def __getstate__(self):
        state = self.__dict__.copy()
        if isinstance(self._array, np.memmap):
            state["_array"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._array is None and self.offset is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)

    def __dask_tokenize__(self):
        return ("relprop.inputs.NpyFile", os.path.abspath(self.path), self._stamp)

    def read(self, start, stop):
        """Rows ``start:stop`` as a new array (C order, the file's dtype)."""
        start, stop = max(0, int(start)), min(len(self), int(stop))
        stop = max(start, stop)
        if self.offset is None:
            return np.ascontiguousarray(self._array[start:stop])
        row = self.shape[1:]
        per_row = int(np.prod(row, dtype=np.int64))
        count = (stop - start) * per_row
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * per_row * self.dtype.itemsize)
            out = np.fromfile(fh, dtype=self.dtype, count=count)
        if out.size != count:
            raise ValueError(f"{self.path}: the file is truncated (rows {start}..{stop - 1} of "
                             f"{len(self)} are not all there)")
        return out.reshape((stop - start,) + row)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        first, rest = (key[0] if key else slice(None)), key[1:]
        if isinstance(first, slice) and first.step in (None, 1):
            start, stop, _ = first.indices(len(self))
            return self.read(start, stop)[(slice(None),) + rest]
        if isinstance(first, (int, np.integer)):
            i = int(first) + (len(self) if first < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {int(first)} is out of range for {len(self)} rows")
            return self.read(i, i + 1)[(0,) + rest]
        rows = np.arange(len(self))[first]  # anything else: read the covering range
        if rows.size == 0:
            return self.read(0, 0)[(slice(None),) + rest]
        lo = int(rows.min())
        return self.read(lo, int(rows.max()) + 1)[(rows - lo,) + rest]


def default_chunk_size(sample_shape, itemsize=4):
    """Samples per chunk: about :data:`CHUNK_BYTES` of inputs, between 1 and
    :data:`MAX_CHUNK`."""
    per_sample = max(1, int(np.prod(sample_shape, dtype=np.int64)) * itemsize)
    return int(min(MAX_CHUNK, max(1, CHUNK_BYTES // per_sample)))
