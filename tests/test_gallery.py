"""The job's gallery and output folders without a model: DIR/index.html in pages with lazy
pictures that enlarge on click (checked in headless Chromium on a 1,000-image gallery made
of records and tiny PNGs), the colour bars, gallery.png's labelled rows, and how each
image's folder is named (the stem, unique on collisions, kept from existing records)."""
import html.parser
import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interp_ext import png, viz, writers

METHODS = ["gradcam", "guided-backprop"]


def _records(out: Path, count: int, methods=METHODS, size: int = 16) -> dict:
    """`count` images' records and tiny PNGs (each file distinct), as the job leaves them;
    returns the summary the job would derive from them."""
    keys = [f"set/img{i:04d}.jpg" for i in range(count)]
    folders = writers.image_folders(keys)
    rng = np.random.default_rng(0)
    for key in keys:
        files = {"input": f"{folders[key]}/input.png"}
        for m in methods:
            files[f"{m}.png"] = f"{folders[key]}/{m}.png"
            files[f"{m}.npy"] = f"{folders[key]}/{m}.npy"
        for name, rel in files.items():
            data = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            writers.atomic_write_bytes(out / rel, png.encode(data) if rel.endswith(".png") else b"")
        record = {"version": writers.RECORD_VERSION, "key": key, "source": f"/data/{key}", "config": {},
                  "methods": {m: {"options": {}, "layer": None} for m in methods}, "target": 1,
                  "target_name": "goldfish", "top5": [{"class": "goldfish", "probability": 0.5}], "files": files}
        writers.atomic_write_bytes(writers.record_path(out, key), json.dumps(record).encode())
    images = {key: writers.entry_of(rec) for key, rec in writers.read_records(out).items()}
    assert len(images) == count
    return {"model": "synthetic", "device": "cpu", "methods": list(methods), "images": images, "skipped": []}


class _Page(html.parser.HTMLParser):
    """The rows, thumbnails, zoom links and page links of one gallery page."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.zoom, self.pages, self.bars = [], [], [], [], 0
        self._in_row = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self._in_row = True
        elif tag == "th" and self._in_row:  # a row's first cell: the image's name
            self.rows.append("")
            self._in_row = False
        elif tag == "img":
            self.images.append(a)
        elif tag == "a" and "zoom" in (a.get("class") or ""):
            self.zoom.append(a)
        elif tag == "a" and a.get("href", "").endswith(".html"):
            self.pages.append(a["href"])
        elif tag == "div" and a.get("class") == "bar":
            self.bars += 1

    def handle_data(self, data):
        if self.rows and not self.rows[-1]:
            self.rows[-1] = data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    out = tmp_path_factory.mktemp("gallery")
    summary = _records(out, 1000)
    index = writers.write_gallery(out, summary)
    return out, summary, index


def test_a_1000_image_gallery_is_paged_and_lazy(big):
    out, summary, index = big
    assert index == out / "index.html"
    pages = [index] + [out / "pages" / f"{k}.html" for k in range(2, 11)]
    assert sorted(p.name for p in (out / "pages").iterdir()) == sorted(p.name for p in pages[1:])
    seen = []
    for number, path in enumerate(pages, 1):
        page = _parse(path)
        keys = [r for r in page.rows if r != "image"]
        assert len(keys) == writers.GALLERY_PAGE == 100
        seen += keys
        assert len(page.images) == 100 * (1 + len(METHODS))
        for img in page.images:  # every thumbnail lazy, with its size (so unloaded rows keep their place)
            assert img["loading"] == "lazy" and img["width"] == img["height"] == "160"
            assert (path.parent / urllib.parse.unquote(img["src"])).is_file()
        for a in page.zoom:  # the click target is the full picture
            assert (path.parent / urllib.parse.unquote(a["href"])).is_file() and a["data-caption"]
        for href in page.pages:  # the pager's links all lead to pages that exist
            assert (path.parent / href).resolve().is_file()
        if number < 10:
            assert _page_href(number + 1, number) in page.pages
        if number > 1:
            assert _page_href(number - 1, number) in page.pages and "../index.html" in page.pages
        assert page.bars == len(METHODS)  # a colour bar per method column
    assert seen == sorted(summary["images"])  # every image once, in order
    # a later run with fewer images removes the pages it no longer has
    small = dict(summary, images=dict(list(summary["images"].items())[:150]))
    writers.write_gallery(out, small)
    assert sorted(p.name for p in (out / "pages").iterdir()) == ["2.html"]
    writers.write_gallery(out, summary)  # and back, for the other tests


def _page_href(page, here):
    return writers._page_href(page, here)


def _browser():
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("Chromium is not installed")
    return found


# After the page has loaded: count the rows and the thumbnails (decoded, lazy as the browser
# parsed them), click the first one and report whether the enlarged picture shows (its
# source, its size on screen), press Escape and report whether it closed. All in the page
# title, read with --dump-dom. (Headless Chromium loads lazy images at once, so that
# loading="lazy" defers them is not observable here; that each page holds 100 rows is.)
PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const thumbs = [...document.images];
  const loaded = thumbs.filter((i) => i.complete && i.naturalWidth > 0).length;
  const lazy = thumbs.filter((i) => i.loading === "lazy").length;
  const rows = document.querySelectorAll("tbody tr").length;
  const link = document.querySelector("a.zoom");
  link.click();
  const box = document.getElementById("zoom"), big = box && box.querySelector("img");
  const report = () => {
    const shown = !box.hidden && getComputedStyle(box).display !== "none";
    const width = Math.round(big.getBoundingClientRect().width);
    const thumb = Math.round(link.querySelector("img").getBoundingClientRect().width);
    const same = big.src === link.href;
    document.dispatchEvent(new KeyboardEvent("keydown", {key: "Escape"}));
    document.title = `rows ${rows} thumbs ${thumbs.length} loaded ${loaded} lazy ${lazy} shown ${shown} `
      + `same ${same} width ${width} thumb ${thumb} closed ${box.hidden}`;
  };
  if (!big) document.title = "rows 0 zoom none";
  else if (big.complete && big.naturalWidth > 0) report();
  else big.addEventListener("load", report);
}, 300));
</script></body>"""

# Click the pager's "next" link: the browser then shows (and --dump-dom prints) the next page.
NEXT = """<script>
window.addEventListener("load", () => document.querySelector('nav.pages a[rel="next"]').click());
</script></body>"""


def _chromium(browser, page: Path, script: str) -> str:
    """The DOM of `page` with `script` added, after Chromium ran it (a copy beside the page,
    so the relative links resolve as in the page)."""
    probe = page.with_name("probe-" + page.name)
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    try:
        res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,800",
                              "--virtual-time-budget=8000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=180)
    finally:
        probe.unlink()
    return res.stdout + "\n" + res.stderr[-2000:]


def _probe(browser, page: Path) -> dict:
    dom = _chromium(browser, page, PROBE)
    start = dom.find("<title>rows ")
    assert start >= 0, dom[:1000]
    words = dom[start + len("<title>"): dom.find("</title>", start)].split()
    return dict(zip(words[::2], words[1::2]))


def test_a_1000_image_gallery_in_chromium_pages_and_enlarges_on_click(big):
    browser = _browser()
    out, summary, index = big
    for page in (index, out / "pages" / "10.html"):
        got = _probe(browser, page)
        thumbs = 100 * (1 + len(METHODS))  # one page of rows, not 1,000
        assert int(got["rows"]) == 100 and int(got["thumbs"]) == thumbs, got
        assert int(got["lazy"]) == thumbs, got  # every thumbnail lazy as the browser reads it
        assert int(got["loaded"]) == thumbs, got  # and every one decodes (the relative links resolve)
        assert got["shown"] == "true" and got["same"] == "true", got  # the click opened the picture itself
        assert int(got["width"]) > 2 * int(got["thumb"]), got  # enlarged
        assert got["closed"] == "true", got  # and Escape closed it
    # the pager works in the browser: "next" on page 1 shows page 2, on page 9 page 10
    for page, shown in ((index, 2), (out / "pages" / "9.html", 10)):
        dom = _chromium(browser, page, NEXT)
        assert f"<title>interp_ext gallery (page {shown} of 10)</title>" in dom, dom[:500]
        assert f"images {(shown - 1) * 100 + 1}-{shown * 100} of 1000" in dom


def test_colour_bars_match_the_pictures():
    heat, signed = np.asarray(viz.colorbar("heat", 64, 4)), np.asarray(viz.colorbar("signed", 65, 4))
    assert heat.shape == (4, 64, 3) and np.array_equal(heat[0], viz.colormap(np.linspace(0, 1, 64)))
    assert np.array_equal(signed[0, 32], viz.diverging(np.zeros(1))[0])  # zero in the middle
    assert signed[0, 0, 2] > signed[0, 0, 0] and signed[0, -1, 0] > signed[0, -1, 2]  # blue to red
    css = viz.css_gradient("signed", stops=3)
    r, g, b = viz.diverging(np.zeros(1))[0]
    assert css.startswith("linear-gradient(to right, ") and f"rgb({r},{g},{b}) 50%" in css


def test_signed_maps_are_centred_on_zero():
    """Guided backprop / deconvnet pictures: zero is the diverging colormap's centre
    whatever the map's mean (the old mean-centred picture drew a map's minimum black)."""
    grad = np.zeros((3, 8, 8), dtype=np.float32)
    grad[:, :, :2] = 1.0  # positive strip, the rest exactly zero: the mean is positive
    grad[:, :, -1] = -0.5
    import torch

    pic = np.asarray(viz.gradient_image(torch.from_numpy(grad)))
    zero = viz.diverging(np.zeros(1))[0]
    assert np.array_equal(pic[0, 4], zero)  # zero drawn as zero, not as "below the mean"
    assert pic[0, 0, 0] > pic[0, 0, 2] and pic[0, -1, 2] > pic[0, -1, 0]  # positive red, negative blue
    assert not np.array_equal(pic[0, -1], pic[0, 4])  # negative differs from zero


def test_contact_sheet_labels_rows_with_name_and_class(tmp_path):
    thumb = 32
    summary = _records(tmp_path, 3, size=thumb)
    summary["images"]["set/img0001.jpg"]["target_name"] = "tench"  # target differs from the top-1 class

    def sheet_of(s):
        with Image.open(writers.write_contact_sheet(tmp_path, s, thumb=thumb)) as im:
            return np.asarray(im.convert("L"))

    def label(sheet, r):  # row r's label cell, below the line between the rows
        width = sheet.shape[1] - thumb * (1 + len(METHODS))
        return sheet[18 + r * thumb + 1: 18 + (r + 1) * thumb, :width]

    sheet = sheet_of(summary)
    assert label(sheet, 0).shape[1] >= 100  # a label column before the pictures
    for r in range(3):  # text (dark pixels) in each row's label cell
        assert (label(sheet, r) < 128).sum() > 30, r
    # each row's label is all its own: a row drawn alone looks the same (nothing of the
    # row above it, with its longer label, reaches into it)
    for key in summary["images"]:
        alone = sheet_of(dict(summary, images={key: summary["images"][key]}))
        assert np.array_equal(label(alone, 0), label(sheet, sorted(summary["images"]).index(key))), key
    # the class is on the label: another class, another label (the name and the class fit at thumb 32)
    other = json.loads(json.dumps(summary))
    other["images"]["set/img0001.jpg"]["target_name"] = "hammerhead"
    changed = sheet_of(other)
    assert not np.array_equal(label(changed, 1), label(sheet, 1))
    assert np.array_equal(label(changed, 0), label(sheet, 0)) and np.array_equal(label(changed, 2), label(sheet, 2))
    legend = sheet[18 + 3 * thumb:]
    assert legend.shape[0] > 10 and (legend < 128).any()  # the colour-bar strip under the rows


def test_names_with_markup_characters_are_escaped(tmp_path):
    """A name with " < > & ' is text in the page: escaped in attributes and in text, its
    links still lead to its pictures."""
    summary = _records(tmp_path, 2)
    key = """we"ird <b>&amp;'s</b>.jpg"""
    folder = writers.image_folders([key])[key]
    files = {"input": f"{folder}/input.png", **{f"{m}.png": f"{folder}/{m}.png" for m in METHODS}}
    for rel in files.values():
        writers.atomic_write_bytes(tmp_path / rel, png.encode(np.zeros((8, 8, 3), dtype=np.uint8)))
    summary["images"][key] = dict(next(iter(summary["images"].values())), files=files, target_name="<i>fish</i> & 'co'")
    text = writers.write_gallery(tmp_path, summary).read_text(encoding="utf-8")
    assert "<b>" not in text and "<i>" not in text and "&amp;amp;" in text  # the name's "&amp;" is text too
    page = _parse(tmp_path / "index.html")
    assert key in page.rows  # the row's heading reads as the name itself
    captions = [a["data-caption"] for a in page.zoom if a["data-caption"].startswith(key)]
    assert captions == [f"{key}: {name}" for name in ["input", *METHODS]]  # attributes decode to the name
    assert all(img["alt"] in captions for img in page.images if img["alt"].startswith(key))
    for a in page.zoom:
        assert (tmp_path / urllib.parse.unquote(a["href"])).is_file(), a["href"]
    assert "target: &lt;i&gt;fish&lt;/i&gt; &amp; &#x27;co&#x27;</small>" in text  # text: escaped too
    writers.write_contact_sheet(tmp_path, summary)  # the picture's labels take any name


def test_going_back_to_one_page_leaves_no_pages(tmp_path):
    summary = _records(tmp_path, 25)
    writers.write_gallery(tmp_path, summary, page_size=10)
    assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == ["2.html", "3.html"]
    few = dict(summary, images=dict(list(summary["images"].items())[:10]))
    writers.write_gallery(tmp_path, few, page_size=10)
    assert not (tmp_path / "pages").exists()  # no stale page, no empty folder
    page = _parse(tmp_path / "index.html")
    assert page.pages == [] and len([r for r in page.rows if r != "image"]) == 10
    assert "page 1 of" not in (tmp_path / "index.html").read_text()


def test_folder_names_are_stems_and_unique():
    keys = ["in/a.jpg", "in/a.png", "in/a.png.gif", "in/s.png", "in/s/c.png", "f.jpg", "f.jpg~2", "x.jpg.png", "x.jpg"]
    folders = writers.image_folders(keys)
    assert folders == {"in/a.jpg": "images/in/a", "in/a.png": "images/in/a.png",
                       "in/a.png.gif": "images/in/a.png.gif",  # its stem is another image's old folder
                       "in/s.png": "images/in/s.png",  # images/in/s/ holds in/s/c.png's folder
                       "in/s/c.png": "images/in/s/c", "f.jpg": "images/f", "f.jpg~2": "images/f~2",
                       "x.jpg.png": "images/x.jpg.png", "x.jpg": "images/x"}
    values = list(folders.values())
    assert len(set(values)) == len(values)
    assert not any(a != b and b.startswith(a + "/") for a in values for b in values)  # none inside another
    # a folder an existing record uses stays with its image, and nobody else gets one a record holds
    kept = writers.image_folders(["in/a.png", "in/a.jpg"], {"in/a.jpg": "images/in/a.jpg", "gone.jpg": "images/in/a"})
    assert kept == {"in/a.png": "images/in/a.png", "in/a.jpg": "images/in/a.jpg"}
    # a claim that collides with what the keys need is not honoured
    assert writers.image_folders(["s.png", "s/c.png"], {"s.png": "images/s"})["s.png"] == "images/s.png"
    assert writers.folder_of_record({"files": {"input": "images/a/input.png", "x.png": "images/b/x.png"}}) is None
    assert writers.folder_of_record({"files": {"input": "../a/input.png"}}) is None
    assert writers.folder_of_record({"files": {"input": "images/a/input.png"}}) == "images/a"


def test_a_folder_a_record_uses_wins_over_the_old_layout_rule():
    # run 1 made a.jpg.png -> images/a.jpg, a.png -> images/a; run 2 has a.jpg and a.png: images/a.jpg is
    # a.jpg's folder in the old layout, but a.jpg.png's record uses it, so a.jpg gets neither it nor images/a
    claims = {"a.png": "images/a", "a.jpg.png": "images/a.jpg"}
    assert writers.image_folders(["a.jpg", "a.png"], claims) == {"a.jpg": "images/a~2", "a.png": "images/a"}
    # and an image of the run keeps a folder its record uses even when it is another image's old-layout folder
    assert writers.image_folders(["x.jpg", "x.jpg.png"], {"x.jpg.png": "images/x.jpg"}) == {
        "x.jpg": "images/x", "x.jpg.png": "images/x.jpg"}


def test_folders_differ_on_case_insensitive_file_systems():
    folders = writers.image_folders(["Photo.JPG", "photo.png", "PHOTO.gif", "d/x.png", "D.png"])
    assert folders == {"Photo.JPG": "images/Photo", "photo.png": "images/photo.png", "PHOTO.gif": "images/PHOTO.gif",
                       "d/x.png": "images/d/x", "D.png": "images/D.png"}  # images/D is images/d there: a parent
    assert len({f.casefold() for f in folders.values()}) == len(folders)
    # a record's folder, spelled in another case, is held all the same
    assert writers.image_folders(["a.png"], {"gone.png": "images/A"}) == {"a.png": "images/a.png"}
    # two images of the run claiming one folder (made before folders were compared case-folded): the later moves
    assert writers.image_folders(["A.png", "a.jpg"], {"A.png": "images/A", "a.jpg": "images/a"}) == {
        "A.png": "images/A", "a.jpg": "images/a.jpg"}


def test_no_folder_is_dot_or_dot_dot():
    keys = ["..jpg", "...jpg", "in/..png", "in/...png~2", "./x.png", "in/../y.png", "z//w.png"]
    folders = writers.image_folders(keys)
    assert folders["..jpg"] == "images/..jpg" and folders["...jpg"] == "images/...jpg"  # stems "." and ".."
    assert folders["in/..png"] == "images/in/..png" and folders["in/...png~2"] == "images/in/...png"
    for key, folder in folders.items():
        assert not any(part in ("", ".", "..") for part in folder.split("/")), (key, folder)
        assert folder.startswith("images/") and len(folder) > len("images/")
    assert len(set(folders.values())) == len(keys)
