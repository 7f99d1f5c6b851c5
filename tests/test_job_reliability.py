"""The batch job under faults: SIGKILL at random points and re-runs, concurrent runs,
changed configurations, a failing torchrun rank, full disks, bad --out, odd inputs
(non-UTF-8 names, thin and huge images, loops, FIFOs), labels.csv edge cases.

All runs use a tiny model (tests/test_cli.py's) and small random images: fast."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interp_ext import cli, explain, models, viz

REPO = Path(__file__).resolve().parent.parent

TINY = textwrap.dedent(
    """
    import os
    import torch
    from torch import nn

    def build(seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1000))

    def build_other():
        return build(seed=1)

    def build_fails_on_rank_1():
        if os.environ.get("RANK") == "1":
            raise FileNotFoundError("weights file missing on this node")
        return build()
    """
)

# A driver for the killed / paused runs: counts os.replace calls (every file the job
# writes is renamed into place once) and SIGKILLs itself at call K, before or after
# the rename; or, in pause mode, stops at the first write until a file appears.
DRIVER = textwrap.dedent(
    """
    import os, random, signal, sys, time
    mode, *arg = os.environ["INJECT"].split(":")
    real_replace, calls = os.replace, [0]

    def replace(src, dst):
        calls[0] += 1
        if mode == "kill" and calls[0] == int(arg[0]):
            if random.Random(int(arg[1])).random() < 0.5:
                real_replace(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "pause" and calls[0] == 1:
            open(arg[0], "w").close()
            while not os.path.exists(arg[1]):
                time.sleep(0.05)
        return real_replace(src, dst)

    os.replace = replace
    from interp_ext import cli
    sys.exit(cli.main(sys.argv[1:]))
    """
)


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    (tmp_path / "job_tiny_model.py").write_text(TINY)
    (tmp_path / "driver.py").write_text(DRIVER)
    monkeypatch.chdir(tmp_path)
    return "job_tiny_model:build"


def _image(path, w=64, h=48, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def images(tmp_path):
    d = tmp_path / "inputs"
    (d / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png", "sub/d.png"]):
        _image(d / name, 40 + 8 * i, 48, seed=i)
    return d


def _explain(*args):
    return cli.main(["explain", *map(str, args), "--quiet"])


def _env(tmp_path, **extra):
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1", **extra}


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _files(out, key):
    """An image's output files as its record names them (never re-derived from the key)."""
    rec = explain.read_record(explain.record_path(out, key))
    assert rec is not None, f"no record for {key}"
    return {name: out / rel for name, rel in rec["files"].items()}


def _tree(out):
    """Every output file (relative path -> bytes), the lock file aside."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def _no_temporaries(out):
    return [str(p) for p in out.rglob("*") if p.name.endswith(".tmp")] == []


# ---- SIGKILL at random points, re-run: the same outputs as an uninterrupted run --------------


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path, tiny, images):
    common = ["--model", tiny, "--methods", "gradcam,saliency", "--batch-size", "1", "--quiet"]
    ref = tmp_path / "ref"
    assert _explain(images, "--out", ref, *common[:-1]) == 0
    reference = _summary(ref)
    writes = len(reference["images"]) * (1 + 2 * 2 + 1) + 3  # input, 2 x (png, npy), record; summary, html, sheet
    expected = {k: v for k, v in _tree(ref).items() if k not in ("summary.json",)}
    rng = random.Random(20261201)
    kills = 0
    for chain in range(2):
        out = tmp_path / f"killed{chain}"
        for _ in range(3):  # three kills in a row, each run resuming the last
            k = rng.randint(1, writes)
            res = subprocess.run([sys.executable, "driver.py", "explain", str(images), "--out", str(out), *common],
                                 env=_env(tmp_path, INJECT=f"kill:{k}:{rng.randint(0, 10**6)}"), cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode in (-signal.SIGKILL, 0), res.stderr[-2000:]  # 0: k was past this run's last write
            kills += res.returncode == -signal.SIGKILL
        assert _explain(images, "--out", out, *common[:-1]) == 0
        summary = _summary(out)
        assert summary["images"] == reference["images"]  # complete entries: target, top-5, config, files
        for entry in summary["images"].values():
            assert entry["top5"] and isinstance(entry["target"], int) and entry["config"]["target"] == "top1"
        got = {k: v for k, v in _tree(out).items() if k not in ("summary.json",)}
        assert got.keys() == expected.keys()
        for name in expected:
            assert got[name] == expected[name], name
        assert _no_temporaries(out)
    assert kills >= 4


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, tiny, images, capsys):
    out = tmp_path / "out"
    started, go = tmp_path / "started", tmp_path / "go"
    common = ["--model", tiny, "--methods", "saliency", "--quiet"]
    # one writer thread: paused at its first rename, the paused run writes nothing else
    first = subprocess.Popen([sys.executable, "driver.py", "explain", str(images), "--out", str(out), *common,
                              "--workers", "1"], env=_env(tmp_path, INJECT=f"pause:{started}:{go}"), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = _tree(out)
        assert _explain(images, "--out", out, *common[:-1]) == 2
        err = capsys.readouterr().err
        assert "another interp-ext run (explain or evaluate) is writing there" in err and f"pid {first.pid}" in err
        assert _tree(out) == before  # the refused run wrote nothing
    finally:
        go.touch()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    summary = _summary(out)
    assert len(summary["images"]) == 4 and _no_temporaries(out)
    assert _explain(images, "--out", out, *common[:-1]) == 0  # the lock went with the first run
    assert _summary(out)["timing"]["processed_this_run"] == 0


def test_atomic_writes_from_two_threads_never_collide(tmp_path):
    path = tmp_path / "x" / "same.png"
    pictures = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    errors = []

    def write(picture):
        try:
            for _ in range(150):
                viz.save_png(picture, path)
        except Exception as e:  # the old fixed temporary name: FileNotFoundError on os.replace
            errors.append(e)

    threads = [threading.Thread(target=write, args=(p,)) for p in pictures]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Image.open(path) as im:
        assert im.getpixel((0, 0)) in ((255, 0, 0), (0, 0, 255))
    assert sorted(p.name for p in path.parent.iterdir()) == ["same.png"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0o600


# ---- resume only what the same configuration made ---------------------------------------------


def test_resume_redoes_images_made_with_another_configuration(tmp_path, tiny, images):
    out = tmp_path / "out"
    common = ["--model", tiny, "--out", out]
    assert _explain(images, *common, "--methods", "saliency", "--target", "5") == 0
    npy = _files(out, "inputs/a.png")["saliency.npy"]
    first = np.load(npy)
    assert _explain(images, *common, "--methods", "saliency", "--target", "7") == 0
    summary = _summary(out)
    assert summary["timing"]["processed_this_run"] == 4
    assert {e["target"] for e in summary["images"].values()} == {7}
    assert {e["config"]["target"] for e in summary["images"].values()} == {7}
    assert not np.array_equal(first, np.load(npy))
    assert _explain(images, *common, "--methods", "saliency", "--target", "7") == 0  # the same: nothing to do
    assert _summary(out)["timing"]["processed_this_run"] == 0
    assert _explain(images, *common, "--methods", "saliency", "--target", "7", "--force") == 0
    assert _summary(out)["timing"]["processed_this_run"] == 4
    # other weights (another function), another layer: redone
    assert _explain(images, "--model", "job_tiny_model:build_other", "--out", out, "--methods", "saliency",
                    "--target", "7") == 0
    assert _summary(out)["timing"]["processed_this_run"] == 4
    for layer, processed in (("3", 4), ("3", 0), ("1", 4)):
        assert _explain(images, *common, "--methods", "gradcam", "--layer", layer) == 0
        assert _summary(out)["timing"]["processed_this_run"] == processed
    entry = _summary(out)["images"]["inputs/a.png"]
    assert entry["methods"]["gradcam"]["layer"] == "1" and entry["config"]["target"] == "top1"
    _image(images / "a.png", seed=9)  # an input that changed since
    assert _explain(images, *common, "--methods", "gradcam", "--layer", "1") == 0
    assert _summary(out)["timing"]["processed_this_run"] == 1
    # another method with the same model and target: added to each record, the earlier maps kept
    assert _explain(images, *common, "--methods", "saliency") == 0
    assert _summary(out)["timing"]["processed_this_run"] == 4
    assert sorted(_summary(out)["images"]["inputs/a.png"]["methods"]) == ["gradcam", "saliency"]
    assert _explain(images, *common, "--methods", "saliency,gradcam", "--layer", "1") == 0
    assert _summary(out)["timing"]["processed_this_run"] == 0


# ---- torchrun: a rank that fails preparation ends every rank, at once -------------------------


def _folders(out):
    """key -> the folder (relative to out) its record keeps its files in."""
    found = {}
    for key in _summary(out)["images"]:
        parents = {str(p.parent.relative_to(out)) for p in _files(out, key).values()}
        assert len(parents) == 1, parents  # one folder per image
        found[key] = parents.pop()
    return found


def test_output_folders_are_stems_and_never_collide(tmp_path, tiny):
    d = tmp_path / "inputs"
    (d / "s").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "a.png", "s.png", "s/c.png", "x.png", "x.png.gif"]):
        _image(d / name, seed=i)
    out = tmp_path / "out"
    common = ["--model", tiny, "--methods", "saliency", "--out", out]
    assert _explain(d, *common) == 0
    folders = _folders(out)
    assert folders == {"inputs/a.jpg": "images/inputs/a", "inputs/a.png": "images/inputs/a.png",
                       "inputs/s.png": "images/inputs/s.png",  # images/inputs/s/ holds s/c.png's folder
                       "inputs/s/c.png": "images/inputs/s/c", "inputs/x.png": "images/inputs/x",
                       "inputs/x.png.gif": "images/inputs/x.png.gif"}
    loaded = models.load_model(tiny, None)
    for key, folder in folders.items():  # each folder holds its own image's files and no other's
        assert sorted(p.name for p in (out / folder).iterdir() if p.is_file()) == ["input.png", "saliency.npy",
                                                                                   "saliency.png"]
        crop = loaded.crop(explain.read_image(d / key.split("/", 1)[1], loaded.resize_size))
        with Image.open(out / folder / "input.png") as got:
            assert np.array_equal(np.asarray(got), np.asarray(crop))
    before = {key: _files(out, key)["saliency.npy"].read_bytes() for key in folders}
    # a new input whose stem an earlier image holds, and one that sorts first: the old folders stay, nothing redone
    _image(d / "a.gif", seed=10)
    (d / "a.jpg").unlink()  # a removed input: its record still points at images/inputs/a, so no one gets it
    _image(d / "a.bmp", seed=11)
    assert _explain(d, *common) == 0
    assert _summary(out)["timing"]["processed_this_run"] == 2
    after = _folders(out)
    assert after["inputs/a.bmp"] == "images/inputs/a.bmp" and after["inputs/a.gif"] == "images/inputs/a.gif"
    assert all(after[key] == folders[key] for key in folders)
    assert {key: _files(out, key)["saliency.npy"].read_bytes() for key in folders} == before


def test_outputs_named_like_files_by_earlier_versions_resume(tmp_path, tiny, images):
    out = tmp_path / "out"
    common = ["--model", tiny, "--out", out]
    assert _explain(images, *common, "--methods", "saliency") == 0
    for rec_path in (out / "records").glob("*.json"):  # the layout before folders were stems: images/<key>/
        rec = json.loads(rec_path.read_text())
        new, old = out / Path(rec["files"]["input"]).parent, out / "images" / rec["key"]
        new.rename(old)
        rec["files"] = {k: str((old / Path(v).name).relative_to(out)) for k, v in rec["files"].items()}
        rec_path.write_text(json.dumps(rec))
    assert _explain(images, *common, "--methods", "saliency") == 0
    assert _summary(out)["timing"]["processed_this_run"] == 0  # found where they are: nothing redone
    assert _folders(out)["inputs/sub/c.png"] == "images/inputs/sub/c.png"
    assert _explain(images, *common, "--methods", "saliency,gradcam") == 0  # a new method: into the same folders
    assert _summary(out)["timing"]["processed_this_run"] == 4
    assert _folders(out) == {key: f"images/{key}" for key in _summary(out)["images"]}
    assert sorted(p.name for p in (out / "images/inputs/sub").iterdir()) == ["c.png", "d.png"]


def test_a_folder_a_record_uses_is_never_given_to_another_image(tmp_path, tiny):
    # run 1: a.jpg.png -> images/inputs/a.jpg, a.png -> images/inputs/a; run 2 without a.jpg.png but with
    # a.jpg, whose folder in the layout of earlier versions is images/inputs/a.jpg: it must go elsewhere
    d = tmp_path / "inputs"
    d.mkdir()
    _image(d / "a.jpg.png", seed=1)
    _image(d / "a.png", seed=2)
    out = tmp_path / "out"
    common = ["--model", tiny, "--methods", "saliency", "--out", out]
    assert _explain(d, *common) == 0
    assert _folders(out) == {"inputs/a.jpg.png": "images/inputs/a.jpg", "inputs/a.png": "images/inputs/a"}
    kept = {name: p.read_bytes() for name, p in _files(out, "inputs/a.jpg.png").items()}
    (d / "a.jpg.png").unlink()
    _image(d / "a.jpg", seed=3)
    assert _explain(d, *common) == 0
    assert _summary(out)["timing"]["processed_this_run"] == 1
    folders = _folders(out)  # the summary keeps a.jpg.png (its record), with its own files
    assert folders == {"inputs/a.jpg.png": "images/inputs/a.jpg", "inputs/a.png": "images/inputs/a",
                       "inputs/a.jpg": "images/inputs/a~2"}
    assert {name: p.read_bytes() for name, p in _files(out, "inputs/a.jpg.png").items()} == kept


def test_stems_dot_and_dot_dot_stay_inside_their_folder(tmp_path, tiny):
    # "..png" has the stem ".", "...png" the stem "..": their files would land in DIR/images/ and DIR/
    d = tmp_path / "odd"
    d.mkdir()
    for i, name in enumerate(["..png", "...png", "x.png"]):
        _image(d / "new.png", seed=i).rename(d / name)  # PIL takes "..png" for a name without a suffix
    out = tmp_path / "out"
    assert _explain(d / "..png", d / "...png", d / "x.png", "--model", tiny, "--methods", "saliency", "--out", out) == 0
    assert _folders(out) == {"..png": "images/..png", "...png": "images/...png", "x.png": "images/x"}
    assert sorted(p.name for p in out.iterdir()) == [".lock", "gallery.png", "images", "index.html", "records",
                                                     "summary.json"]
    assert all(p.is_dir() for p in (out / "images").iterdir())  # no image's files loose in images/


def test_force_redoes_every_image_in_the_same_folders(tmp_path, tiny):
    d = tmp_path / "inputs"
    (d / "s").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "a.png", "s.png", "s/c.png"]):
        _image(d / name, seed=i)
    out = tmp_path / "out"
    common = ["--model", tiny, "--methods", "saliency", "--out", out]
    assert _explain(d, *common) == 0
    folders = _folders(out)
    assert folders["inputs/a.jpg"] == "images/inputs/a" and folders["inputs/a.png"] == "images/inputs/a.png"
    inodes = {key: _files(out, key)["saliency.npy"].stat().st_ino for key in folders}
    before = sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*"))
    _image(d / "a.gif", seed=9)  # a new input that sorts first: with --force too, every image keeps its folder
    assert _explain(d, *common, "--force") == 0
    assert _summary(out)["timing"]["processed_this_run"] == 5
    after = _folders(out)
    assert {key: after[key] for key in folders} == folders and after["inputs/a.gif"] == "images/inputs/a.gif"
    for key in folders:  # redone (each file replaced by a new one), in place
        assert _files(out, key)["saliency.npy"].stat().st_ino != inodes[key]
    assert sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*") if "a.gif" not in str(p)) == before
    assert _explain(d, *common, "--force") == 0 and _folders(out) == after


def test_a_rank_failing_preparation_ends_all_ranks(tmp_path, tiny, images):
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "interp_ext.cli", "explain", str(images), "--out", str(tmp_path / "out"),
                          "--model", "job_tiny_model:build_fails_on_rank_1", "--methods", "saliency", "--quiet"],
                         env=_env(tmp_path), cwd=tmp_path, timeout=90, capture_output=True, text=True)
    assert res.returncode != 0
    assert "error (rank 1): weights file missing on this node" in res.stderr
    assert "exitcode  : 2" in res.stderr  # the failing rank's own code, not a timeout
    assert "interp_ext/cli.py" not in res.stderr and "interp_ext/explain.py" not in res.stderr  # no traceback of ours
    assert not (tmp_path / "out").exists()


# ---- full disk, bad --out: one line, before the model, nothing left half-written -------------


@pytest.fixture()
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(explain, "load_model", refuse)


@pytest.mark.parametrize("kind", ["file", "proc", "under_file"])
def test_bad_out_fails_before_the_model(tmp_path, images, no_model, capsys, kind):
    out = {"file": tmp_path / "taken", "proc": Path("/proc/interp_ext_out"), "under_file": tmp_path / "taken" / "o"}[kind]
    (tmp_path / "taken").write_text("a file")
    assert _explain(images, "--methods", "saliency", "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"interp-ext explain: error: --out {out}:") and err.count("\n") == 1
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_read_only_out_fails_before_the_model(tmp_path, images, no_model, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    assert _explain(images, "--methods", "saliency", "--out", ro / "out") == 2
    assert "cannot write in" in capsys.readouterr().err


def test_unwritable_out_fails_before_the_model(tmp_path, images, no_model, monkeypatch, capsys):
    import tempfile

    def refuse(*a, **k):  # what a read-only folder (for a user who is not root) answers
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert _explain(images, "--methods", "saliency", "--out", tmp_path / "out") == 2
    assert f"--out {tmp_path / 'out'}: cannot write in {tmp_path} (Permission denied)" in capsys.readouterr().err


def test_full_disk_is_found_before_the_model(tmp_path, images, no_model, monkeypatch, capsys):
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 0

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    assert _explain(images, "--methods", "saliency", "--out", tmp_path / "out") == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_disk_full_while_writing_stops_cleanly(tmp_path, tiny, images, monkeypatch, capsys):
    out = tmp_path / "out"
    real_save, calls = np.save, [0]

    def save(fh, arr, *a, **k):
        calls[0] += 1
        if calls[0] == 4:  # the third image's first map: half written, then the disk is full
            fh.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(fh, arr, *a, **k)

    monkeypatch.setattr(np, "save", save)
    assert _explain(images, "--model", tiny, "--methods", "saliency", "--batch-size", "2", "--out", out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1  # one line
    assert err.startswith("interp-ext explain: error: cannot write ") and "No space left on device; " in err
    assert _no_temporaries(out)
    assert len(list((out / "records").glob("*.json"))) == 3  # the images before it are complete and recorded
    monkeypatch.setattr(np, "save", real_save)
    assert _explain(images, "--model", tiny, "--methods", "saliency", "--out", out) == 0
    assert _summary(out)["timing"]["processed_this_run"] == 1 and len(_summary(out)["images"]) == 4


# ---- inputs: names, sizes, loops, special files, lists ---------------------------------------


def test_non_utf8_names_give_a_valid_summary_and_gallery(tmp_path, tiny, images):
    raw = os.fsencode(images) + b"/caf\xe9.png"
    _image(os.fsdecode(raw))
    out = tmp_path / "out"
    # a summary from an earlier version carrying a lone surrogate must not break this run
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"images": {"caf\udce9.png": {"source": "x", "files": {}}}}))
    assert _explain(images, "--model", tiny, "--methods", "saliency", "--out", out) == 0
    text = (out / "summary.json").read_text()
    summary = json.loads(text)
    json.dumps(summary, ensure_ascii=False).encode("utf-8")  # no lone surrogates anywhere
    assert "\\ud" not in text
    key = "inputs/caf%E9.png"
    assert key in summary["images"] and summary["images"][key]["source"].endswith("caf%E9.png")
    page = (out / "index.html").read_text(encoding="utf-8")
    saliency = _files(out, key)["saliency.png"]
    assert saliency.parent.name == "caf%E9" and saliency.is_file()
    href = urllib.parse.quote(str(saliency.relative_to(out)))
    assert f'href="{href}"' in page and (out / urllib.parse.unquote(href)).is_file()
    assert (out / "gallery.png").is_file()


def test_a_list_of_non_utf8_names(tmp_path, tiny, images):
    _image(os.fsdecode(os.fsencode(images) + b"/\xff.png"))
    (images / "list.txt").write_bytes(b"\xff.png\na.png\n")
    out = tmp_path / "out"
    assert _explain(images / "list.txt", "--model", tiny, "--methods", "saliency", "--out", out) == 0
    assert sorted(_summary(out)["images"]) == ["%FF.png", "a.png"]


def test_an_unreadable_list_is_reported(tmp_path, images, monkeypatch):
    listing = tmp_path / "list.txt"
    listing.write_text("inputs/a.png\n")
    if os.geteuid() == 0:  # root reads anything: answer as the file system would for a user
        real = Path.read_bytes

        def read_bytes(self):
            if self == listing:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real(self)
        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    else:
        listing.chmod(0)
    found, skipped = explain.discover([str(listing), str(images / "b.jpg")])
    assert [i.key for i in found] == ["b.jpg"]
    assert skipped == [{"source": str(listing), "reason": "cannot read the list (Permission denied)"}]


def test_loops_fifos_and_devices_are_reported(tmp_path, images):
    os.symlink("loop2.jpg", images / "loop1.jpg")
    os.symlink("loop1.jpg", images / "loop2.jpg")
    os.symlink("..", images / "sub" / "up")  # a folder loop
    os.symlink("gone.png", images / "dangling.png")
    os.mkfifo(images / "pipe.png")
    found, skipped = explain.discover([str(images), "/dev/zero", str(tmp_path / "fifo.jpg"), str(tmp_path / "nope.jpg")],)
    reasons = {Path(s["source"]).name: s["reason"] for s in skipped}
    assert sorted(i.key for i in found) == ["inputs/a.png", "inputs/b.jpg", "inputs/sub/c.png", "inputs/sub/d.png"]
    assert reasons["loop1.jpg"] == reasons["loop2.jpg"] == "symlink loop"
    assert reasons["up"].startswith("symlink loop")
    assert reasons["dangling.png"] == "broken symlink"
    assert reasons["pipe.png"] == "not a regular file (FIFO)"
    assert reasons["zero"] == "not a regular file (character device)"
    assert reasons["nope.jpg"] == "no such file or folder"
    os.mkfifo(tmp_path / "fifo.jpg")
    _, skipped = explain.discover([str(tmp_path / "fifo.jpg")])
    assert skipped[0]["reason"] == "not a regular file (FIFO)"


def test_a_thin_image_costs_a_crop_not_a_resize():
    thin = Image.new("RGB", (4000, 1), "red")
    before = Image.core.get_stats()["allocated_blocks"]
    crop = models.center_crop(thin, 256, 224)
    allocated = (Image.core.get_stats()["allocated_blocks"] - before) * Image.core.get_block_size()
    assert crop.size == (224, 224) and crop.getpixel((100, 100)) == (255, 0, 0)
    assert allocated < 100 << 20  # the whole-image resize first: 256 x 1,024,000 pixels, 1 GB


def test_a_thin_image_is_explained(tmp_path, tiny):
    d = tmp_path / "thin"
    d.mkdir()
    Image.new("RGB", (16000, 1), "white").save(d / "strip.png")
    assert _explain(d, "--model", tiny, "--methods", "saliency", "--out", tmp_path / "out") == 0
    assert np.load(_files(tmp_path / "out", "thin/strip.png")["saliency.npy"]).shape == (224, 224)


def test_a_20000_by_20000_jpeg_is_read_at_an_eighth(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    big = Image.new("L", (20000, 20000), 128)
    big.save(tmp_path / "big.jpg", quality=30)
    del big
    monkeypatch.undo()  # PIL's own limit again: 400 Mpixels is far beyond it
    with explain.read_image(tmp_path / "big.jpg", 256) as im:
        assert im.size == (2500, 2500) and im.mode == "RGB"


def test_huge_jpeg_decodes_at_reduced_size_and_other_huge_images_are_refused(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # so that a 3000 x 3000 image counts as huge
    d = tmp_path / "huge"
    d.mkdir()
    Image.new("RGB", (3000, 3000), "gray").save(d / "big.jpg", quality=50)
    Image.new("RGB", (2000, 1500), "gray").save(d / "big.png")
    small = explain.read_image(d / "big.jpg", 256)
    assert small.size == (375, 375)
    with pytest.raises(explain.ImageRefused, match=r"2000x1500 is 3.0 Mpixels, above the limit of 2.0 Mpixels"):
        explain.read_image(d / "big.png", 256)
    assert _explain(d, "--model", tiny, "--methods", "saliency", "--out", tmp_path / "out") == 0
    summary = _summary(tmp_path / "out")
    assert list(summary["images"]) == ["huge/big.jpg"]
    assert summary["skipped"][0]["reason"].startswith("refused: 2000x1500")
    assert Image.MAX_IMAGE_PIXELS == 1_000_000  # restored


# ---- labels.csv -------------------------------------------------------------------------------


CATEGORIES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray"]


def _labels(tmp_path, text):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_labels_header_signs_and_duplicates(tmp_path):
    assert explain.read_labels(_labels(tmp_path, "image,label\na.png,+5\nb.png, goldfish\nb.png,1\n"), CATEGORIES) == {
        "a.png": 5, "b.png": 1}
    assert explain.read_labels(_labels(tmp_path, "\ufeffa.png,2\n"), CATEGORIES) == {"a.png": 2}  # a BOM, no header
    with pytest.raises(ValueError, match=r"line 1: unknown class 'goldfsh'"):
        explain.read_labels(_labels(tmp_path, "a.png,goldfsh\nb.png,1\n"), CATEGORIES)
    with pytest.raises(ValueError, match=r"line 3: 'a.png' has class 2, but line 1 gave it class 1"):
        explain.read_labels(_labels(tmp_path, "a.png,1\nb.png,3\na.png,great white shark\n"), CATEGORIES)


def test_bad_labels_file_fails_before_any_output(tmp_path, tiny, images, capsys):
    labels = _labels(tmp_path, "a.png,1\nb.jpg,3\na.png,2\n")
    assert _explain(images, "--model", tiny, "--target", labels, "--out", tmp_path / "out") == 2
    assert "line 3: 'a.png' has class 2" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert _explain(images / "a.png", "--model", tiny, "--methods", "saliency", "--target", "+5",
                    "--out", tmp_path / "out") == 0
    assert _summary(tmp_path / "out")["images"]["a.png"]["target"] == 5


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet18", "--weights", "garbage.pth"], "--weights garbage.pth: not a PyTorch state-dict file"),
    (["--model", "resnet18", "--weights", "other.pth"], "--weights other.pth: cannot load it into resnet18 (Error(s) in"),
    (["--model", "no_such_module:build"], "--model no_such_module:build: cannot import 'no_such_module'"),
    (["--model", "job_tiny_model:nothing"], "--model job_tiny_model:nothing: 'job_tiny_model' has no function 'nothing'"),
])
def test_bad_model_or_weights_is_one_line_naming_the_argument(tmp_path, tiny, images, capsys, args, message):
    import torch

    (tmp_path / "garbage.pth").write_bytes(b"not a pickle")
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "other.pth")
    assert _explain(images, "--methods", "saliency", "--out", tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"interp-ext explain: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_concurrent_reads_keep_the_pixel_limit(tmp_path, monkeypatch):
    # read_image lifts PIL's global limit for the header read: readers run in threads, and
    # without a lock one reader could save another's lifted limit (a huge PNG then passed)
    from concurrent.futures import ThreadPoolExecutor

    from interp_ext import inputs

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    big, small = tmp_path / "big.png", tmp_path / "small.jpg"
    Image.new("RGB", (600, 400), "gray").save(big)
    Image.new("RGB", (300, 200), "gray").save(small)

    def read(i):
        try:
            inputs.read_image(big if i % 2 else small, 64)
            return "read"
        except inputs.ImageRefused:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, range(400)))
    assert results == ["read", "refused"] * 200
    assert Image.MAX_IMAGE_PIXELS == 100_000
