"""Everything the job writes, and the one way it writes a file: atomically.

``atomic_write(path, fill)`` writes into a temporary file with a unique name in the
target's own folder (so that two processes never share one), flushes and fsyncs it,
then renames it over ``path`` (``os.replace``: readers see the old file or the new one,
never a half-written one). On any error, a ``KeyboardInterrupt`` included, the
temporary file is removed and a :class:`WriteError` naming the path is raised; the
target is untouched. A process killed by SIGKILL can leave a temporary file behind:
its name matches :data:`TEMP_PATTERN`, and the job sweeps such files from the folders
it owns (under its lock) with :func:`remove_stale_temporaries`.

On top of it: the per-image files (raw maps as .npy, PNG pictures) and the image's
record ``DIR/records/<hash>.json``, written last (:func:`write_image`); the run's
``summary.json``, ``index.html`` gallery and ``gallery.png`` contact sheet.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import tempfile
import urllib.parse
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from . import png
from .inputs import InputImage, display_name

RECORD_VERSION = 1

TEMP_SUFFIX = ".tmp"
# tempfile.mkstemp names: "." + target name + "." + 8 random characters + ".tmp"
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; outputs get the usual 0o666 & ~umask
_FILE_MODE = 0o666 & ~_umask()


class WriteError(OSError):
    """An output file could not be written (disk full, permission, quota...)."""

    def __init__(self, path: Union[str, Path], error: BaseException):
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
        super().__init__(getattr(error, "errno", None), f"cannot write {os.fsdecode(path)}: {reason}")
        self.path = Path(path)

    def __str__(self) -> str:  # one line, without OSError's "[Errno N]" prefix
        return self.args[1]


def atomic_write(path: Union[str, Path], fill: Callable[[IO[bytes]], None]) -> Path:
    """Create or replace `path` with what `fill(fh)` writes into a binary file object."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, _FILE_MODE)
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, e) from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def remove_stale_temporaries(folder: Union[str, Path]) -> int:
    """Delete temporary files that :func:`atomic_write` left in `folder` (not recursive)
    when its process was killed. Call only while no other writer uses the folder."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if TEMP_PATTERN.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


# ---- files of the job ------------------------------------------------------------------------------


def save_npy(array: np.ndarray, path: Path) -> Path:
    return atomic_write(path, lambda fh: np.save(fh, array))


def save_png(image: Image.Image, path: Union[str, Path]) -> Path:
    """A PIL image as PNG, atomically: 8-bit gray / RGB (with or without alpha) through
    the fast encoder (:mod:`interp_ext.png`), any other mode through PIL."""
    if image.mode in png.MODES:
        data = png.encode(np.asarray(image).reshape(image.height, image.width, png.MODES[image.mode]))
        return atomic_write_bytes(path, data)
    return atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def outputs_of(out: Path, image: InputImage, methods: Sequence[str]) -> dict[str, Path]:
    folder = out / "images" / image.key
    files = {"input": folder / "input.png"}
    for m in methods:
        files[f"{m}.png"] = folder / f"{m}.png"
        files[f"{m}.npy"] = folder / f"{m}.npy"
    return files


def _text(value: Any) -> str:
    return html.escape(display_name(value))


def write_gallery(out: Path, summary: dict) -> Path:
    """DIR/index.html: images x methods, relative links only (viewable offline). Every
    name goes through :func:`display_name`, so no file name can break the page."""
    methods = summary["methods"]
    rows = []
    for key, entry in sorted(summary["images"].items()):
        files = entry.get("files") or {}
        cells = []
        for name in ["input", *methods]:
            rel = files.get("input" if name == "input" else f"{name}.png")
            if rel is None:
                cells.append("<td>-</td>")
                continue
            src = html.escape(urllib.parse.quote(display_name(rel)))
            cells.append(f'<td><a href="{src}"><img src="{src}" alt="{_text(key)} {_text(name)}" width="160"></a></td>')
        top = entry.get("top5") or []
        pred = _text(f"{top[0]['class']} ({top[0]['probability']:.1%})") if top else ""
        target = _text(entry.get("target_name", entry.get("target", "")))
        rows.append(f"<tr><th>{_text(key)}<br><small>top-1: {pred}<br>target: {target}</small></th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{_text(n)}</th>" for n in ["image", "input", *methods])
    skipped = "".join(f"<li>{_text(s['source'])}: {_text(s['reason'])}</li>" for s in summary.get("skipped", []))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>interp_ext gallery</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}} img{{display:block}}</style></head>
<body><h1>interp_ext: {_text(summary['model'])}</h1>
<p>{len(summary['images'])} images, methods: {_text(', '.join(methods))}; device {_text(summary['device'])}</p>
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table>
{f'<h2>Skipped</h2><ul>{skipped}</ul>' if skipped else ''}
</body></html>
"""
    return atomic_write_bytes(out / "index.html", page.encode("utf-8"))


def write_contact_sheet(out: Path, summary: dict, thumb: int = 112, max_images: int = 16) -> Optional[Path]:
    """DIR/gallery.png: the first `max_images` images x (input + methods) as one picture,
    for a README or a report (the full set is in index.html)."""
    keys = sorted(summary["images"])[:max_images]
    if not keys:
        return None
    columns = ["input", *summary["methods"]]
    label_h = 16
    sheet = Image.new("RGB", (thumb * len(columns), label_h + thumb * len(keys)), "white")
    from PIL import ImageDraw

    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * thumb + 4, 2), name, fill="black")
    for r, key in enumerate(keys):
        files = summary["images"][key].get("files") or {}
        for c, name in enumerate(columns):
            rel = files.get("input" if name == "input" else f"{name}.png")
            if rel and (out / rel).is_file():
                try:
                    with Image.open(out / rel) as im:
                        sheet.paste(im.convert("RGB").resize((thumb, thumb), Image.BILINEAR), (c * thumb, label_h + r * thumb))
                except (OSError, ValueError):  # changed under us: leave the cell blank
                    pass
    return atomic_write(out / "gallery.png", lambda fh: sheet.save(fh, format="PNG", optimize=True))


def clean_text(value: Any) -> Any:
    """`value` with every string (keys included) made valid Unicode (:func:`display_name`),
    so that the JSON written is valid for any reader (no lone surrogates)."""
    if isinstance(value, str):
        return display_name(value)
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_text(v) for v in value]
    return value


def write_summary(out: Path, summary: dict) -> Path:
    return atomic_write_bytes(out / "summary.json", json.dumps(clean_text(summary), indent=2).encode("ascii"))


# ---- per-image records ----------------------------------------------------------------------


def record_path(out: Path, key: str) -> Path:
    """DIR/records/<hash of the key>.json: written last for each image, after all its files."""
    return Path(out) / "records" / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}.json"


_ENTRY_FIELDS = ("source", "target", "target_name", "top5", "files", "config", "methods")


def read_record(path: Path) -> Optional[dict]:
    """A record, or None if missing, unreadable, of another version or malformed."""
    try:
        rec = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    if (not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION or not isinstance(rec.get("key"), str)
            or any(f not in rec for f in _ENTRY_FIELDS) or not isinstance(rec["files"], dict)
            or not isinstance(rec["methods"], dict) or not isinstance(rec["config"], dict)):
        return None
    return rec


def entry_of(rec: dict) -> dict:
    """The summary's entry of one image: its record's public fields."""
    return {f: rec[f] for f in _ENTRY_FIELDS}


def files_exist(out: Path, files: dict) -> bool:
    return all(isinstance(rel, str) and (out / rel).is_file() for rel in files.values())


def read_records(out: Path) -> dict[str, dict]:
    """key -> record, for every valid record under DIR/records whose files all exist."""
    found = {}
    try:
        names = sorted(e.name for e in os.scandir(Path(out) / "records") if e.name.endswith(".json"))
    except OSError:
        return found
    for name in names:
        rec = read_record(Path(out) / "records" / name)
        if rec is not None and display_name(rec["key"]) == rec["key"] and files_exist(Path(out), rec["files"]):
            found[rec["key"]] = rec
    return found


def write_image(out: Path, image: InputImage, image_config: dict, method_configs: Mapping[str, dict],
                crop: Image.Image, maps: Mapping[str, torch.Tensor], fields: dict,
                draw: Callable[[str, Image.Image, torch.Tensor], Image.Image], kinds: Mapping[str, str],
                execution: Optional[dict] = None) -> dict:
    """One image's files, then its record (last: a record means every file is complete).
    `method_configs`: per requested method its recorded options and layer; `maps`: per
    method the image's map; `draw(kind, crop, map)` its picture (`kinds[method]`);
    `fields`: target, target_name, top5; `execution`: settings recorded but not matched
    on resume (they change no map). Returns the image's summary entry. Any file that
    cannot be written raises :class:`WriteError` (the image then has no record)."""
    methods = list(method_configs)
    rpath = record_path(out, image.key)
    old = read_record(rpath)
    if old is not None or rpath.exists():
        try:
            rpath.unlink()  # the files are about to change: no record until they are all written
        except FileNotFoundError:
            pass
        except OSError as e:
            raise WriteError(rpath, e) from e
    files = outputs_of(out, image, methods)
    for m in methods:
        amap = maps[m]
        save_npy(amap.numpy().astype(np.float32), files[f"{m}.npy"])
        save_png(draw(kinds[m], crop, amap), files[f"{m}.png"])
    save_png(crop, files["input"])
    rec_methods: dict[str, dict] = {}
    rec_files = {"input": str(files["input"].relative_to(out))}
    if old is not None and old["key"] == image.key and old["config"] == image_config:
        for m, mc in old["methods"].items():  # maps of other methods made with the same model and target
            kept = {k: old["files"].get(k) for k in (f"{m}.png", f"{m}.npy")}
            if m not in method_configs and files_exist(out, kept):
                rec_methods[m] = mc
                rec_files.update(kept)
    for m in methods:
        rec_methods[m] = method_configs[m]
        rec_files[f"{m}.png"] = str(files[f"{m}.png"].relative_to(out))
        rec_files[f"{m}.npy"] = str(files[f"{m}.npy"].relative_to(out))
    record = {"version": RECORD_VERSION, "key": image.key, "source": display_name(image.source),
              "config": image_config, "methods": rec_methods, **fields, "files": rec_files}
    if execution is not None:
        record["execution"] = execution
    record = clean_text(record)
    atomic_write_bytes(rpath, json.dumps(record, indent=1).encode("ascii"))
    return entry_of(record)
