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
import itertools
import json
import os
import re
import tempfile
import urllib.parse
from pathlib import Path, PurePosixPath
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
    """Create or replace `path` with `data`, atomically (:func:`atomic_write`)."""
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
    """`array` as a ``.npy`` file, atomically."""
    return atomic_write(path, lambda fh: np.save(fh, array))


def save_png(image: Image.Image, path: Union[str, Path]) -> Path:
    """A PIL image as PNG, atomically: 8-bit gray / RGB (with or without alpha) through
    the fast encoder (:mod:`interp_ext.png`), any other mode through PIL."""
    if image.mode in png.MODES:
        data = png.encode(np.asarray(image).reshape(image.height, image.width, png.MODES[image.mode]))
        return atomic_write_bytes(path, data)
    return atomic_write(path, lambda fh: image.save(fh, format="PNG"))


# ---- output folders ------------------------------------------------------------------------------

IMAGES = "images"  # every image's folder lies under DIR/images
_DEDUP_TAIL = re.compile(r"~\d+$")  # discover()'s suffix of a repeated name ("flower.jpg~2")
_UNSAFE_PARTS = ("", ".", "..")  # never a folder's name: they name the folder itself or the one above


def _safe_part(part: str) -> str:
    """A path component usable as a folder name: "." and ".." spelled out (%2E), "" as "_"."""
    if part in _UNSAFE_PARTS:
        return part.replace(".", "%2E") or "_"
    return part


def _parents(folder: str) -> list[str]:
    """"images/a/b/c" -> ["images", "images/a", "images/a/b"]."""
    parts = folder.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _fold(folder: str) -> str:
    """`folder` as a case-insensitive file system sees it (macOS, Windows, exFAT, SMB):
    ``images/Photo`` and ``images/photo`` are one folder there."""
    return folder.casefold()


def folder_of_record(rec: Optional[dict]) -> Optional[str]:
    """The one folder (relative to DIR) that holds every file of a record, or None when its
    files are spread over several folders or lie outside DIR/images."""
    if not rec or not isinstance(rec.get("files"), dict) or not rec["files"]:
        return None
    parents = set()
    for rel in rec["files"].values():
        if not isinstance(rel, str):
            return None
        parents.add(rel.rsplit("/", 1)[0] if "/" in rel else "")
    folder = parents.pop() if len(parents) == 1 else None
    if folder is None or not folder.startswith(IMAGES + "/"):
        return None
    if any(part in _UNSAFE_PARTS for part in folder.split("/")):
        return None
    return folder


def image_folders(keys: Sequence[str], claimed: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Each image's output folder, relative to DIR: ``images/<the key's folders>/<stem>``
    (``inputs/china.jpg`` -> ``images/inputs/china``), unique among the images.

    `keys`: the images' keys in discovery order (the run's owner works the folders out
    once and every rank adopts them). `claimed`: key -> the folder its existing record
    uses (:func:`recorded_folders`; keys of images not in this run too). A folder a record
    uses wins: its image keeps it, so a re-run finds its files where they are (outputs
    made before folders were named by the stem included), and it is never given to
    another image, so no new input overwrites files a record still points at. The only
    claims not kept: one that is a folder some key of this run needs as a parent
    (``images/s`` when ``s/c.png`` is an input), and, of two claims of this run's images
    that are the same folder or one inside the other, the later (the image is redone).

    New folders: never one an image's key needs as a parent (``a.png`` beside a folder
    ``a/``: ``a.png`` gets ``images/a.png``), never the folder ``images/<key>`` of another
    image of the run (where outputs of earlier versions live), never inside another
    image's folder or around one, never given twice: the first image in `keys` gets the
    stem, the next the file name (``a.jpg`` -> ``images/a``, ``a.png`` ->
    ``images/a.png``), then ``stem~2``, ``stem~3``... A stem that is "", "." or ".."
    (``..jpg``) is replaced by the file name. Folders are compared case-folded, so they
    stay apart on case-insensitive file systems too (``Photo.JPG`` -> ``images/Photo``,
    ``photo.png`` -> ``images/photo.png``); each keeps its spelling on disk."""
    keys = list(dict.fromkeys(keys))
    claimed = dict(claimed or {})
    paths = {key: "/".join([IMAGES, *map(_safe_part, key.split("/"))]) for key in keys}
    dirs: set[str] = set()  # every folder (case-folded) an image's key needs as a parent
    for path in paths.values():
        dirs.update(_fold(p) for p in _parents(path))
    legacy = {_fold(f"{IMAGES}/{key}"): key for key in keys}  # the folder earlier versions used: the whole key
    used: set[str] = set()  # case-folded, as every set here
    above_used: set[str] = set()  # the parents of the folders given
    folders: dict[str, str] = {}

    def clashes(folder: str) -> bool:  # the same as, inside or around a folder given
        f = _fold(folder)
        return f in used or f in above_used or any(_fold(p) in used for p in _parents(folder))

    def take(folder: str, key: Optional[str]) -> None:
        used.add(_fold(folder))
        above_used.update(_fold(p) for p in _parents(folder))
        if key is not None:
            folders[key] = folder

    for key in keys:  # this run's images keep the folders their records use
        folder = claimed.get(key)
        if folder and _fold(folder) not in dirs and not clashes(folder):
            take(folder, key)
    in_run = set(keys)
    for key, folder in sorted(claimed.items()):  # no image gets a folder another image's record uses
        if key not in in_run and folder and _fold(folder) not in dirs and _fold(folder) not in used:
            take(folder, None)

    def free(folder: str, key: str) -> bool:
        f = _fold(folder)
        return f not in dirs and legacy.get(f, key) == key and not clashes(folder)

    for key in keys:
        if key in folders:
            continue
        parent, _, name = paths[key].rpartition("/")
        base = _DEDUP_TAIL.sub("", name) or name
        stem = PurePosixPath(base).stem
        if stem in _UNSAFE_PARTS:  # "..jpg" has the stem ".": the whole name instead
            stem = base
        candidates = itertools.chain(dict.fromkeys((stem, base)), (f"{stem}~{k}" for k in itertools.count(2)))
        folder = next(f for f in (f"{parent}/{c}" for c in candidates) if free(f, key))
        take(folder, key)
    return {key: folders[key] for key in keys}


def recorded_folders(out: Path) -> dict[str, str]:
    """key -> the folder of its record's files, for every valid record in DIR/records
    (:func:`folder_of_record`); the claims :func:`image_folders` honours."""
    found: dict[str, str] = {}
    for rec in _each_record(out):
        folder = folder_of_record(rec)
        if folder is not None:
            found.setdefault(rec["key"], folder)
    return found


def _each_record(out: Path):
    """Every readable record under DIR/records, in file-name order."""
    try:
        names = sorted(e.name for e in os.scandir(Path(out) / "records") if e.name.endswith(".json"))
    except OSError:
        return
    for name in names:
        rec = read_record(Path(out) / "records" / name)
        if rec is not None:
            yield rec


def outputs_of(out: Path, image: InputImage, methods: Sequence[str], folder: str) -> dict[str, Path]:
    """The files of one image: ``input`` (the crop) and per method ``<m>.png`` and
    ``<m>.npy``, in `folder` (relative to `out`; from :func:`image_folders`, which keeps
    the folders of all the run's images apart: an image's folder is never worked out
    on its own)."""
    if not isinstance(folder, str) or not folder.startswith(IMAGES + "/") or any(
            part in _UNSAFE_PARTS for part in folder.split("/")):
        raise ValueError(f"the output folder of {display_name(image.key)!r} must be a folder under {IMAGES}/ "
                         f"from image_folders(), got {folder!r}")
    folder = Path(out) / folder
    files = {"input": folder / "input.png"}
    for m in methods:
        files[f"{m}.png"] = folder / f"{m}.png"
        files[f"{m}.npy"] = folder / f"{m}.npy"
    return files


def _text(value: Any) -> str:
    return html.escape(display_name(value))


GALLERY_PAGE = 100  # images per gallery page: index.html, then pages/2.html, pages/3.html...
_PAGE_NAME = re.compile(r"^(\d+)\.html$")


def _scale_kinds(methods: Sequence[str]) -> dict[str, str]:
    """method -> the colour bar its pictures need: "heat" or "signed" (registry's picture kinds)."""
    from . import registry  # here, not at the top: registry imports viz, which imports this module

    kinds = {}
    for m in methods:
        method = registry.METHODS.get(m)
        if method is not None:
            kinds[m] = "heat" if method.picture == "heat" else "signed"
    return kinds


# the labels under a colour bar, left to right: the gallery's column headers and gallery.png's strip
# (ASCII: the contact sheet's fallback bitmap font has no minus sign)
_SCALE_LABELS = {"heat": ("low", "high"), "signed": ("-", "0", "+")}

_GALLERY_STYLE = """\
body{font-family:sans-serif;margin:1em;color:#222}
table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}
thead th{position:sticky;top:0;background:#fff;z-index:1}
img{display:block;object-fit:contain;background:#f4f4f4}
a.zoom{cursor:zoom-in}
.bar{height:8px;width:160px;margin-top:3px;border:1px solid #999}
.scale{display:flex;justify-content:space-between;width:160px;font-size:11px;font-weight:normal;color:#555}
nav.pages{margin:.6em 0}
nav.pages a,nav.pages b{margin-right:.4em}
#zoom{position:fixed;inset:0;background:rgba(0,0,0,.85);display:flex;flex-direction:column;align-items:center;justify-content:center;
  z-index:10;cursor:zoom-out;margin:0}
#zoom[hidden]{display:none}
#zoom img{width:min(90vw,82vh);height:auto;max-height:82vh;background:#fff}
#zoom figcaption{color:#fff;text-align:center;margin-top:.5em}
.scores{font-size:11px;color:#333;margin-top:3px;line-height:1.3}
table.summary{margin-bottom:1em}
table.summary td{text-align:right}
"""

# Click a picture: it fills the window (arrow keys: the next / previous picture; a click,
# Escape: back). Without script the link opens the picture itself.
_GALLERY_SCRIPT = """\
(() => {
  let box = null, big = null, cap = null, at = -1;
  const links = () => [...document.querySelectorAll("a.zoom")];
  const show = (i) => {
    const a = links()[i];
    if (!a) return;
    if (!box) {  // made on the first click: the page's images are the thumbnails only
      box = document.createElement("figure");
      box.id = "zoom";
      big = box.appendChild(document.createElement("img"));
      cap = box.appendChild(document.createElement("figcaption"));
      document.body.appendChild(box);
    }
    at = i;
    big.src = a.href;
    big.alt = cap.textContent = a.dataset.caption || "";
    box.hidden = false;
  };
  const open = () => box && !box.hidden;
  const hide = () => { box.hidden = true; big.removeAttribute("src"); at = -1; };
  document.addEventListener("click", (e) => {
    const a = e.target.closest && e.target.closest("a.zoom");
    if (a && e.button === 0 && !e.ctrlKey && !e.metaKey && !e.shiftKey && !e.altKey) {
      e.preventDefault();
      show(links().indexOf(a));
    } else if (open() && box.contains(e.target)) {
      hide();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (!open()) return;
    if (e.key === "Escape") hide();
    else if (e.key === "ArrowRight") show(at + 1);
    else if (e.key === "ArrowLeft") show(at - 1);
  });
})();
"""


def _page_href(page: int, here: int) -> str:
    """The link from page `here` to page `page` (1: index.html, k: pages/k.html)."""
    if page == 1:
        return "index.html" if here == 1 else "../index.html"
    return f"pages/{page}.html" if here == 1 else f"{page}.html"


def _pager(here: int, count: int) -> str:
    if count <= 1:
        return ""
    shown = sorted({1, count, *range(max(1, here - 3), min(count, here + 3) + 1)})
    links = []
    if here > 1:
        links.append(f'<a href="{_page_href(here - 1, here)}" rel="prev">&lsaquo; previous</a>')
    last = 0
    for p in shown:
        if p > last + 1:
            links.append("<span>&hellip;</span>")
        links.append(f"<b>{p}</b>" if p == here else f'<a href="{_page_href(p, here)}">{p}</a>')
        last = p
    if here < count:
        links.append(f'<a href="{_page_href(here + 1, here)}" rel="next">next &rsaquo;</a>')
    return f'<nav class="pages">page {here} of {count}: {" ".join(links)}</nav>'


def format_score(value: Any) -> str:
    """A score as the pages show it: 4 significant digits, "-" for none."""
    return "-" if value is None else f"{value:.4g}"


def scores_summary_html(scores: dict, prefix: str = "") -> str:
    """The summary table of `scores` (see :func:`write_gallery`): a row per method, per
    metric its mean ± std over the images (and how many), which way is better, and links
    to the files beside the page (`prefix`: the way from the page to DIR)."""
    metrics = scores["metrics"]
    head = "".join(f"<th>{_text(k)}<br><small>{_text(scores['better'].get(k, ''))} is better</small></th>"
                   for k in metrics)
    rows = []
    for m in scores["methods"]:
        cells = []
        for k in metrics:
            s = (scores["summary"].get(m) or {}).get(k) or {}
            if s.get("mean") is None:
                cells.append("<td>-</td>")
                continue
            spread = f" &plusmn; {format_score(s['std'])}" if s.get("std") is not None else ""
            cells.append(f"<td>{format_score(s['mean'])}{spread} <small>({s['n']})</small></td>")
        rows.append(f"<tr><th>{_text(m)}</th>{''.join(cells)}</tr>")
    links = ", ".join(f'<a href="{prefix}{html.escape(urllib.parse.quote(name))}">{_text(name)}</a>'
                      for name in scores.get("links", []))
    return (f'<h2>Scores</h2><p>mean &plusmn; std over the images (how many); curve metrics: the area under '
            f'the curve{f"; {links}" if links else ""}.</p>'
            f'<table class="summary"><thead><tr><th>method</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def write_gallery(out: Path, summary: dict, page_size: int = GALLERY_PAGE, scores: Optional[dict] = None) -> Path:
    """DIR/index.html: images x methods, relative links only (viewable offline), in pages
    of `page_size` images (index.html, then DIR/pages/2.html...; pages left by an earlier,
    larger run are removed). Pictures load lazily, a click enlarges one (the arrow keys
    step through the page), and each method's column header carries the colour bar of its
    pictures. Every name goes through :func:`display_name`, so no file name can break a
    page. Returns the path of index.html.

    `scores` (from ``interp-ext evaluate``: :func:`interp_ext.evaluate.gallery_scores`):
    ``metrics``, ``better`` (metric -> "lower" / "higher"), ``methods``, ``images`` (key ->
    method -> metric -> score), ``summary`` (method -> metric -> mean, std, n) and ``links``
    (files in DIR): the first page then shows the summary table, and each picture its
    image's scores under it."""
    if page_size < 1:
        raise ValueError(f"page_size must be positive, got {page_size}")
    from . import viz  # here, not at the top: viz imports this module

    methods = summary["methods"]
    kinds = _scale_kinds(methods)
    items = sorted(summary["images"].items())
    count = max(1, -(-len(items) // page_size))
    head = ["<th>image</th>", "<th>input</th>"]
    for m in methods:
        bar = ""
        if m in kinds:
            labels = "".join(f"<span>{html.escape(t)}</span>" for t in _SCALE_LABELS[kinds[m]])
            bar = (f'<div class="bar" style="background:{viz.css_gradient(kinds[m])}"></div>'
                   f'<div class="scale">{labels}</div>')
        head.append(f"<th>{_text(m)}{bar}</th>")
    skipped = "".join(f"<li>{_text(s['source'])}: {_text(s['reason'])}</li>" for s in summary.get("skipped", []))
    legend = []
    if "heat" in kinds.values():
        legend.append("heat maps: black (low) to pale yellow (high), each picture scaled to its own range")
    if "signed" in kinds.values():
        legend.append("signed maps: blue negative, light grey zero, red positive, each picture scaled to its "
                      "largest magnitudes")
    for page in range(1, count + 1):
        prefix = "" if page == 1 else "../"
        rows = []
        for key, entry in items[(page - 1) * page_size : page * page_size]:
            files = entry.get("files") or {}
            cells = []
            for name in ["input", *methods]:
                rel = files.get("input" if name == "input" else f"{name}.png")
                if rel is None:
                    cells.append("<td>-</td>")
                    continue
                src = prefix + html.escape(urllib.parse.quote(display_name(rel)))
                caption = f"{_text(key)}: {_text(name)}"
                cells.append(f'<td><a class="zoom" href="{src}" data-caption="{caption}"><img src="{src}" '
                             f'alt="{caption}" width="160" height="160" loading="lazy" decoding="async"></a>'
                             f'{_image_scores(scores, key, name)}</td>')
            top = entry.get("top5") or []
            pred = _text(f"{top[0]['class']} ({top[0]['probability']:.1%})") if top else ""
            target = _text(entry.get("target_name", entry.get("target", "")))
            rows.append(f"<tr><th>{_text(key)}<br><small>top-1: {pred}<br>target: {target}</small></th>"
                        f"{''.join(cells)}</tr>")
        first, last = (page - 1) * page_size + 1, min(page * page_size, len(items))
        shown = f"images {first}-{last} of {len(items)}" if count > 1 else f"{len(items)} images"
        pager = _pager(page, count)
        page_html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>interp_ext gallery{f' (page {page} of {count})' if count > 1 else ''}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_GALLERY_STYLE}</style></head>
<body><h1>interp_ext: {_text(summary['model'])}</h1>
<p>{shown}, methods: {_text(', '.join(methods))}; device {_text(summary['device'])}. Click a picture to enlarge it.</p>
{f'<p><small>{_text("; ".join(legend))}.</small></p>' if legend else ''}
{scores_summary_html(scores, prefix) if scores and page == 1 else ''}
{pager}
<table><thead><tr>{''.join(head)}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{pager}
{f'<h2>Skipped</h2><ul>{skipped}</ul>' if skipped and page == 1 else ''}
<script>{_GALLERY_SCRIPT}</script>
</body></html>
"""
        target = out / "index.html" if page == 1 else out / "pages" / f"{page}.html"
        atomic_write_bytes(target, page_html.encode("utf-8"))
    try:
        stale = [e.path for e in os.scandir(out / "pages")
                 if (m := _PAGE_NAME.match(e.name)) and not 2 <= int(m.group(1)) <= count]
    except OSError:
        stale = []
    for path in stale:
        try:
            os.unlink(path)
        except OSError:
            pass
    if count == 1:
        try:
            os.rmdir(out / "pages")  # a single page: no pages/ folder (if nothing else is in it)
        except OSError:
            pass
    return out / "index.html"


def _image_scores(scores: Optional[dict], key: str, method: str) -> str:
    """One picture's scores (its image and method), a line per metric; "" without any."""
    per = ((scores or {}).get("images", {}).get(key) or {}).get(method) or {}
    lines = [f"{_text(k)}: {format_score(per[k])}" for k in (scores or {}).get("metrics", []) if k in per]
    return f'<div class="scores">{"<br>".join(lines)}</div>' if lines else ""


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """`text` cut to `width` pixels, with "..." where it was cut (the start is dropped:
    the end of a path names the file)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def write_contact_sheet(out: Path, summary: dict, thumb: int = 112, max_images: int = 16) -> Optional[Path]:
    """DIR/gallery.png: the first `max_images` images x (input + methods) as one picture,
    for a README or a report (the full set is in index.html). Each row is labelled with
    the image's name, its target class and the model's top-1 class (as many of these
    lines as the row's height holds, in that order; a label never reaches into the next
    row); the columns with the method names; a strip at the bottom holds the colour bars
    of the heat and signed maps."""
    from PIL import ImageDraw, ImageFont

    from . import viz  # here, not at the top: viz imports this module

    keys = sorted(summary["images"])[:max_images]
    if not keys:
        return None
    methods = summary["methods"]
    kinds = _scale_kinds(methods)
    columns = ["input", *methods]
    try:
        font = ImageFont.load_default(size=11)
    except (TypeError, OSError):  # PIL without FreeType: its bitmap font
        font = ImageFont.load_default()
    label_w, head_h, line_h = 150, 18, 14
    legend_h = 36 if kinds else 0
    width = label_w + thumb * len(columns)
    sheet = Image.new("RGB", (width, head_h + thumb * len(keys) + legend_h), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((label_w + c * thumb + 4, 3), _fit(draw, name, font, thumb - 8), fill="black", font=font)
    pad = 6 if thumb >= 64 else 2  # above the first line of a row's label
    for r, key in enumerate(keys):
        entry = summary["images"][key]
        y = head_h + r * thumb
        top = entry.get("top5") or []
        target = display_name(entry.get("target_name", entry.get("target", "")))
        lines = [display_name(key), f"class: {target}"]
        if top:
            cls, p = display_name(top[0]["class"]), top[0]["probability"]
            lines.append(f"top-1: {cls} ({p:.0%})" if cls != target else f"p(top-1) {p:.0%}")
        # drawn in a cell of the row's size and pasted: nothing can reach into the next row
        label = Image.new("RGB", (label_w, thumb), "white")
        pen = ImageDraw.Draw(label)
        for i, line in enumerate(lines[: max(1, (thumb - pad) // line_h)]):
            pen.text((4, pad + i * line_h), _fit(pen, line, font, label_w - 8), fill="black", font=font)
        sheet.paste(label, (0, y))
        if r:
            draw.line([(0, y), (width, y)], fill=(200, 200, 200))
        files = entry.get("files") or {}
        for c, name in enumerate(columns):
            rel = files.get("input" if name == "input" else f"{name}.png")
            if rel and (out / rel).is_file():
                try:
                    with Image.open(out / rel) as im:
                        sheet.paste(im.convert("RGB").resize((thumb, thumb), Image.BILINEAR), (label_w + c * thumb, y))
                except (OSError, ValueError):  # changed under us: leave the cell blank
                    pass
    if kinds:
        y = head_h + thumb * len(keys) + 8
        x = 4
        for kind, text in (("heat", "heat maps"), ("signed", "signed maps")):
            if kind not in kinds.values():
                continue
            labels = _SCALE_LABELS[kind]
            lo, hi = labels[0], labels[-1]
            draw.text((x, y + 1), f"{text}:  {lo}", fill="black", font=font)
            x += int(draw.textlength(f"{text}:  {lo}", font=font)) + 4
            sheet.paste(viz.colorbar(kind, 120, 10), (x, y + 2))
            if len(labels) == 3:  # the middle label under the bar's centre
                draw.text((x + 60 - 3, y + 13), labels[1], fill="black", font=font)
            x += 124
            draw.text((x, y + 1), hi, fill="black", font=font)
            x += int(draw.textlength(hi, font=font)) + 24
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
    """DIR/summary.json (ASCII JSON, every string valid Unicode: :func:`clean_text`)."""
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
    """Whether every value of `files` is a path (relative to `out`) of an existing file."""
    return all(isinstance(rel, str) and (out / rel).is_file() for rel in files.values())


def read_records(out: Path) -> dict[str, dict]:
    """key -> record, for every valid record under DIR/records whose files all exist."""
    found = {}
    for rec in _each_record(out):
        if display_name(rec["key"]) == rec["key"] and files_exist(Path(out), rec["files"]):
            found[rec["key"]] = rec
    return found


def write_image(out: Path, image: InputImage, image_config: dict, method_configs: Mapping[str, dict],
                crop: Image.Image, maps: Mapping[str, torch.Tensor], fields: dict,
                draw: Callable[[str, Image.Image, torch.Tensor], Image.Image], kinds: Mapping[str, str],
                execution: Optional[dict] = None, *, folder: str) -> dict:
    """One image's files, then its record (last: a record means every file is complete).
    `method_configs`: per requested method its recorded options and layer; `maps`: per
    method the image's map; `draw(kind, crop, map)` its picture (`kinds[method]`);
    `fields`: target, target_name, top5; `execution`: settings recorded but not matched
    on resume (they change no map); `folder` (required): the image's folder relative to
    `out`, from :func:`image_folders` over all the run's images. Returns the image's
    summary entry. Any file that cannot be written raises :class:`WriteError` (the image
    then has no record)."""
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
    files = outputs_of(out, image, methods, folder)
    for m in methods:
        amap = maps[m]
        save_npy(amap.numpy().astype(np.float32), files[f"{m}.npy"])
        save_png(draw(kinds[m], crop, amap), files[f"{m}.png"])
    save_png(crop, files["input"])
    rec_methods: dict[str, dict] = {}
    rec_files = {"input": str(files["input"].relative_to(out))}
    if old is not None and old["key"] == image.key and old["config"] == image_config:
        here = rec_files["input"].rsplit("/", 1)[0]
        for m, mc in old["methods"].items():  # maps of other methods made with the same model and target
            kept = {k: old["files"].get(k) for k in (f"{m}.png", f"{m}.npy")}
            in_folder = all(isinstance(rel, str) and rel.rsplit("/", 1)[0] == here for rel in kept.values())
            if m not in method_configs and in_folder and files_exist(out, kept):
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
