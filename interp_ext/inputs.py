"""The job's inputs: finding the images (files, folders, lists), reading one image the way
the model needs it (JPEGs drafted at reduced size, huge images refused), the crop and
tensor the model sees, and ``labels.csv``.

Every name that reaches a summary, a gallery or an output folder goes through
:func:`display_name` (valid Unicode whatever bytes the file system holds).
"""
from __future__ import annotations

import codecs
import csv
import errno
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LIST_SUFFIXES = {".txt", ".lst"}
INT_PATTERN = re.compile(r"^[+-]?\d+$")


class ExplainError(ValueError):
    """A user error found before any work: the message names the argument."""


# ---- names --------------------------------------------------------------------------------


def _percent_escape(err: UnicodeError) -> tuple[str, int]:
    bad = err.object[err.start:err.end]
    return "".join(f"%{b:02X}" for b in bad), err.end


codecs.register_error("interp_ext_percent", _percent_escape)


def display_name(name: Any) -> str:
    """A file name or path as valid Unicode text for JSON, HTML and output folder names:
    bytes that are not UTF-8 (kept by Python as lone surrogates, PEP 383) become ``%XX``;
    valid names are unchanged."""
    s = os.fspath(name) if isinstance(name, (os.PathLike, bytes)) else str(name)
    raw = s if isinstance(s, bytes) else None
    if raw is None:
        try:
            raw = os.fsencode(s)
        except UnicodeError:  # surrogates that no file name produced (e.g. from JSON)
            raw = s.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "interp_ext_percent")


# ---- inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    source: Path
    key: str  # output sub-folder under DIR/images: unique, valid Unicode, the same on every run


def _not_regular(mode: int) -> str:
    kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else
            "character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode) else "special file")
    return f"not a regular file ({kind})"


def _stat(path: Path) -> tuple[Optional[os.stat_result], str]:
    """(stat following links, '') or (None, why it cannot be used)."""
    try:
        return path.stat(), ""
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "symlink loop"
        if e.errno == errno.ENOENT:
            return None, "broken symlink" if path.is_symlink() else "no such file or folder"
        return None, f"cannot read ({e.strerror})"


def _walk(root: Path, found: list[tuple[Path, str]], skipped: list[dict], exclude: set) -> None:
    """Every image under `root`, following symlinked folders but not into a loop."""
    base = Path(root.resolve().name)
    items: list[tuple[Path, Optional[str]]] = []  # (path, None) = image, (path, reason) = skipped

    def visit(folder: Path, ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            items.append((folder, f"cannot read the folder ({e.strerror})"))
            return
        for entry in entries:
            path = Path(entry.path)
            st, why = _stat(path)
            if entry.name.startswith(".") and (st is None or not stat.S_ISDIR(st.st_mode)):
                continue  # hidden files
            if st is None:
                items.append((path, why))
            elif stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in exclude:
                    continue  # the --out folder inside an input folder
                if ident in ancestors:
                    items.append((path, "symlink loop (links to a folder above it)"))
                else:
                    visit(path, ancestors | {ident})
            elif not stat.S_ISREG(st.st_mode):
                items.append((path, _not_regular(st.st_mode)))
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((path, None))
            else:
                items.append((path, f"not an image file (suffix {path.suffix or 'none'!r})"))

    st = root.stat()
    visit(root, frozenset({(st.st_dev, st.st_ino)}))
    for path, why in sorted(items, key=lambda item: item[0]):
        if why is None:
            found.append((path, str(base / path.relative_to(root))))
        else:
            skipped.append({"source": display_name(path), "reason": why})


def _read_list(path: Path, found: list[tuple[Path, str]], skipped: list[dict]) -> None:
    try:
        data = path.read_bytes()
    except OSError as e:
        skipped.append({"source": display_name(path), "reason": f"cannot read the list ({e.strerror})"})
        return
    for raw in data.splitlines():
        line = os.fsdecode(raw.strip())
        if not line or line.startswith("#"):
            continue
        f = Path(line) if Path(line).is_absolute() else path.parent / line
        st, why = _stat(f)
        if st is not None and stat.S_ISREG(st.st_mode):
            found.append((f, f.name))
            continue
        if st is not None:
            why = "a folder" if stat.S_ISDIR(st.st_mode) else _not_regular(st.st_mode)
        skipped.append({"source": display_name(f), "reason": f"listed in {display_name(path)} but {why}"})


def discover(inputs: Sequence[str], exclude: Optional[Path] = None) -> tuple[list[InputImage], list[dict]]:
    """Image files, folders (recursive, following symlinked folders, loops reported) and
    text files listing paths (.txt / .lst) -> images with stable unique keys, and the
    entries that are not images (with why). `exclude`: a folder not to descend into
    (the output folder). Keys and reported sources are valid Unicode (:func:`display_name`)."""
    found: list[tuple[Path, str]] = []
    skipped: list[dict] = []
    excluded = set()
    if exclude is not None:
        try:
            st = Path(exclude).stat()
            excluded.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    for arg in inputs:
        path = Path(arg)
        st, why = _stat(path)
        if st is None:
            skipped.append({"source": display_name(arg), "reason": why})
        elif stat.S_ISDIR(st.st_mode):
            _walk(path, found, skipped, excluded)
        elif not stat.S_ISREG(st.st_mode):
            skipped.append({"source": display_name(arg), "reason": _not_regular(st.st_mode)})
        elif path.suffix.lower() in LIST_SUFFIXES:
            _read_list(path, found, skipped)
        else:
            found.append((path, path.name))
    images, used = [], set()
    for source, key in found:
        key = display_name(key)
        unique, k = key, 2
        while unique in used:
            unique, k = f"{key}~{k}", k + 1
        used.add(unique)
        images.append(InputImage(source, unique))
    return images, skipped


class ImageRefused(ValueError):
    """An image that is not decoded because it is too large."""


def max_decoded_pixels() -> Optional[int]:
    """The most pixels an image may decode to: PIL's decompression-bomb error limit
    (2 x ``Image.MAX_IMAGE_PIXELS``, about 179 million), or None when that is off."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


_OPEN_LOCK = threading.Lock()


def read_image(path: Path, size_hint: int) -> Image.Image:
    """An RGB image; 16-bit and float images scaled to 8 bits, palette / grayscale / RGBA
    converted. JPEGs decode at reduced size (``draft``: 1/2, 1/4 or 1/8, never below
    `size_hint`), which is all the model needs, so a huge JPEG is read at a fraction of
    its size; any image still above :func:`max_decoded_pixels` raises
    :class:`ImageRefused` (the job skips it and says why)."""
    # PIL's bomb check at open() is switched off for the header read (the size is checked
    # below, after draft() shrank a JPEG); the job reads in several threads, so the global
    # is changed and restored under one lock (unlocked, one reader could save another's None)
    with _OPEN_LOCK:
        limit = max_decoded_pixels()
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with im:
            w0, h0 = im.size
            im.draft("RGB", (size_hint, size_hint))  # JPEG only; a no-op for other formats
            w, h = im.size
            if limit is not None and w * h > limit:
                raise ImageRefused(f"refused: {w0}x{h0} is {w0 * h0 / 1e6:.1f} Mpixels, above the limit of "
                                   f"{limit / 1e6:.1f} Mpixels decoded (PIL.Image.MAX_IMAGE_PIXELS x 2)")
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                return Image.fromarray((np.clip(a / top, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
            return im.convert("RGB")


def read_label_rows(path: Path) -> list[tuple[int, str, str]]:
    """labels.csv rows ``image,label`` -> (line number, image, label text), checked for
    form only (class names need the model's categories: :func:`resolve_labels`). The
    first row is a header when its label is not a number and its image column does not
    name an image file (``image,label``); a first row like ``cat.jpg,tabby`` is data."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except OSError as e:
        raise ExplainError(f"--target {display_name(path)}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ExplainError(f"--target {display_name(path)}: not a UTF-8 CSV file ({e})") from None
    out, first = [], True
    for row_no, row in enumerate(rows, 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            raise ExplainError(f"--target {display_name(path)}: line {row_no} needs two columns (image,label), got {row!r}")
        name, label = row[0].strip(), row[1].strip()
        if first and not INT_PATTERN.match(label) and Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            first = False
            continue  # header
        first = False
        out.append((row_no, name, label))
    return out


def resolve_labels(path: Path, rows: Sequence[tuple[int, str, str]], categories: Sequence[str]) -> dict[str, int]:
    """Class indices (``5``, ``+5``) or names (case-insensitive) -> {image: class};
    an unknown class, an index out of range or one image with two different labels is an
    error naming the line(s)."""
    index = {name.lower(): i for i, name in enumerate(categories)}
    where = display_name(path)
    labels: dict[str, int] = {}
    line_of: dict[str, int] = {}
    for row_no, name, label in rows:
        if INT_PATTERN.match(label):
            value = int(label)
        elif label.lower() in index:
            value = index[label.lower()]
        else:
            raise ExplainError(f"--target {where}: line {row_no}: unknown class {label!r}")
        if not 0 <= value < len(categories):
            raise ExplainError(f"--target {where}: line {row_no}: class {value} is not in [0, {len(categories)})")
        if name in labels and labels[name] != value:
            raise ExplainError(f"--target {where}: line {row_no}: {name!r} has class {value}, but line "
                               f"{line_of[name]} gave it class {labels[name]}")
        labels[name] = value
        line_of.setdefault(name, row_no)
    return labels


def read_labels(path: Path, categories: Sequence[str]) -> dict[str, int]:
    """labels.csv rows ``image,label``: image is a file name or path, label a class
    index or an ImageNet class name. A header row is allowed."""
    return resolve_labels(path, read_label_rows(path), categories)


def load_crop(image: "InputImage", loaded: Any) -> tuple[Image.Image, torch.Tensor]:
    """One image as the job needs it: (the RGB crop the model sees, for the pictures;
    its normalised (3, S, S) float32 tensor). `loaded`: an
    :class:`interp_ext.models.LoadedModel`. Raises :class:`ImageRefused` or whatever
    PIL raises for a file that is not a readable image."""
    from . import models

    crop = loaded.crop(read_image(image.source, loaded.resize_size))  # only the crop is resampled
    return crop, loaded.normalize(models.to_unit_tensor(crop))
