"""`interp-ext explain` end to end on a folder of good and bad files; resume; errors
before any work; labels; a user model; 2-rank torchrun run equal to one process; `info`."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interp_ext import cli, explain

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def photo():
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("flower.jpg"))


@pytest.fixture()
def folder(tmp_path, photo):
    d = tmp_path / "inputs"
    (d / "sub").mkdir(parents=True)
    photo.save(d / "flower.jpg")
    photo.convert("L").save(d / "sub" / "gray.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "sub" / "rgba.png")
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(d / "deep16.png")
    good = (d / "flower.jpg").read_bytes()
    (d / "corrupt.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    (d / "fake.jpg").write_text("not an image")
    (d / "notes.txt").write_text("a text file inside the folder")
    return d


GOOD = ["inputs/deep16.png", "inputs/flower.jpg", "inputs/sub/gray.png", "inputs/sub/rgba.png"]


def _explain(*args):
    return cli.main(["explain", *map(str, args), "--quiet"])


def _files(out, key):
    """An image's output files as its record names them (never re-derived from the key)."""
    rec = explain.read_record(explain.record_path(out, key))
    assert rec is not None, f"no record for {key}"
    return {name: out / rel for name, rel in rec["files"].items()}


def test_folder_of_good_and_bad_files(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert _explain(folder, "--methods", "gradcam,saliency,guided-backprop", "--out", out, "--batch-size", "3") == 0
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["images"]) == GOOD
    assert summary["methods"] == ["gradcam", "saliency", "guided-backprop"] and summary["layer"] == "_blocks.15"
    skipped = {Path(s["source"]).name: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"corrupt.jpg", "fake.jpg", "notes.txt"}
    assert "unreadable" in skipped["corrupt.jpg"] and "unreadable" in skipped["fake.jpg"]
    assert "not an image file" in skipped["notes.txt"]
    for name in skipped:
        assert name in err  # and a line on stderr
    for key, entry in summary["images"].items():
        files = _files(out, key)
        assert {name: out / rel for name, rel in entry["files"].items()} == files  # the summary's paths are the record's
        assert files["input"].is_file()
        assert np.load(files["gradcam.npy"]).shape == (224, 224)
        assert np.load(files["saliency.npy"]).dtype == np.float32
        assert np.load(files["guided-backprop.npy"]).shape == (3, 224, 224)
        assert Image.open(files["gradcam.png"]).size == (224, 224)
        assert entry["target_name"] == entry["top5"][0]["class"]  # --target top1
    # folders are named by the stem: images/inputs/flower/, not images/inputs/flower.jpg/
    assert {key: str(_files(out, key)["input"].parent.relative_to(out)) for key in GOOD} == {
        "inputs/deep16.png": "images/inputs/deep16", "inputs/flower.jpg": "images/inputs/flower",
        "inputs/sub/gray.png": "images/inputs/sub/gray", "inputs/sub/rgba.png": "images/inputs/sub/rgba"}
    assert summary["images"]["inputs/flower.jpg"]["top5"][0]["class"] == "daisy"
    t = summary["timing"]
    assert t["processed_this_run"] == 4 and t["images_per_second"] > 0
    # one forward and a plain and a guided backward per batch, timed as the planner's gradient pass
    assert t["passes_per_batch"] == ["forward", "backward:plain", "backward:guided"] and set(t["pass_seconds"]) == {"gradient"}
    assert not list(out.rglob("*.tmp"))  # every file renamed into place
    html = (out / "index.html").read_text()
    for key in GOOD:
        assert f'href="{summary["images"][key]["files"]["gradcam.png"]}"' in html
    with Image.open(out / "gallery.png") as sheet:  # a label column + images x (input + 3 methods)
        assert sheet.size[0] > 4 * 112 and sheet.size[1] > 4 * 112


def test_second_run_skips_finished_images(folder, tmp_path):
    out = tmp_path / "out"
    assert _explain(folder, "--methods", "saliency", "--out", out) == 0
    flower, gray = _files(out, "inputs/flower.jpg"), _files(out, "inputs/sub/gray.png")
    stamp = flower["saliency.npy"].stat().st_mtime_ns
    first = json.loads((out / "summary.json").read_text())
    gray["saliency.npy"].unlink()  # an interrupted image is redone
    assert _explain(folder, "--methods", "saliency", "--out", out) == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["timing"]["processed_this_run"] == 1
    assert flower["saliency.npy"].stat().st_mtime_ns == stamp
    assert second["images"]["inputs/flower.jpg"] == first["images"]["inputs/flower.jpg"]  # top-5 kept
    assert _files(out, "inputs/sub/gray.png") == gray and gray["saliency.npy"].is_file()


def test_image_conversions(folder):
    sixteen = explain.read_image(folder / "deep16.png", 256)
    gray = explain.read_image(folder / "sub" / "gray.png", 256)
    assert sixteen.mode == gray.mode == "RGB"
    # 16-bit values v * 257 scale back to v, not to white
    assert np.abs(np.asarray(sixteen, dtype=int) - np.asarray(gray, dtype=int)).max() <= 1
    assert explain.read_image(folder / "sub" / "rgba.png", 256).mode == "RGB"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "gradcam,telepathy"], "unknown telepathy"),
        (["--methods", "gradcam", "--layer", "_blocks.150"], "close matches"),
        (["--target", "1000"], r"class 1000 is not in \[0, 1000\)"),
        (["--target", "no_such_labels.csv"], "--target must be top1"),
        (["--model", "resnet18"], "needs a local state-dict file"),
        (["--batch-size", "0"], "--batch-size must be positive"),
    ],
)
def test_bad_options_fail_before_any_work(folder, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    try:
        code = _explain(folder, "--out", out, *args)
    except SystemExit as e:  # argparse
        code = e.code
    assert code == 2
    assert message.replace("\\", "") in capsys.readouterr().err or pytest.fail("message not found")
    assert not out.exists()


def test_a_wrong_layer_names_the_option_and_lists_the_valid_layers(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert _explain(folder, "--out", out, "--methods", "gradcam", "--layer", "_blocks.150") == 2
    lines = capsys.readouterr().err.strip().splitlines()  # the skipped files of the folder, then one line
    err = lines[-1]
    assert "target_layer" not in "".join(lines) and sum("error" in line for line in lines) == 1
    assert err.startswith("interp-ext explain: error: --layer: the model has no layer named '_blocks.150'; valid layers (")
    listed = err.split("close matches first): ")[1].split(", ")
    assert listed[0] == "_blocks.15" and listed[1].startswith("_blocks.1")  # the closest first
    assert {"_conv_head", "_blocks.3"} <= set(listed)  # then the outer layers, which a user would pick
    assert not out.exists()
    # a layer that exists but gives no feature map: said so before the run, with the same listing
    assert _explain(folder, "--out", out, "--methods", "gradcam", "--layer", "_fc") == 2
    err = capsys.readouterr().err
    assert "--layer: layer '_fc' does not output a (N, C, h, w) feature map; valid layers (" in err
    assert not out.exists()
    # a layer whose map is 1x1 (global pooling, the squeeze of squeeze-excite) gives a flat CAM: refused, not listed
    assert _explain(folder, "--out", out, "--methods", "gradcam", "--layer", "_avg_pooling") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--layer: layer '_avg_pooling' outputs a 1x1 map: a CAM over it is a single value, a flat map" in err
    listed = err.split("close matches first): ")[1].split(", ")
    assert "_avg_pooling" not in listed and not any("_se_" in name for name in listed) and "_blocks.15" in listed
    assert not out.exists()


def test_help_is_plain_text_with_the_defaults(capsys, monkeypatch):
    import argparse
    import re

    from interp_ext import registry

    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside a default
    parser = cli._parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    kinds = next(a for a in subcommands["visualize"]._actions if isinstance(a, argparse._SubParsersAction)).choices
    for argv, sub in [(["explain"], subcommands["explain"])] + [(["visualize", k], p) for k, p in kinds.items()]:
        with pytest.raises(SystemExit) as e:
            cli.main([*argv, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        for markup in ("``", ":func:", ":class:", ":mod:", ":meth:"):
            assert markup not in text, (argv, markup)
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default}" in text, (argv, action.option_strings)
            # written once, by the formatter from the argparse default: never by hand in the help string
            assert "(default" not in (action.help or ""), (argv, action.option_strings)
        if argv == ["explain"]:
            for name, method in registry.METHODS.items():  # the methods, one a line, with what each is
                assert re.search(rf"^  {re.escape(name)} +{re.escape(method.help)}$", text, re.M), name
    # each command's --steps default is the argparse default, shown by the formatter
    assert {k: p.get_default("steps") for k, p in kinds.items()} == {"class": 200, "channel": 200, "dream": 20,
                                                                      "invert": 200, "fool": 100}


def test_unknown_option_is_an_argparse_error(folder, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["explain", str(folder), "--out", str(tmp_path / "o"), "--colour", "red"])
    assert e.value.code == 2 and not (tmp_path / "o").exists()


def test_nothing_processable_exits_non_zero(tmp_path, folder, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / "fake.jpg", bad)
    assert _explain(bad, "--methods", "saliency", "--out", tmp_path / "o1") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _explain(empty, "--methods", "saliency", "--out", tmp_path / "o2") == 1
    assert _explain(tmp_path / "missing", "--methods", "saliency", "--out", tmp_path / "o3") == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_targets_from_an_index_and_a_labels_file(folder, tmp_path):
    out = tmp_path / "out"
    assert _explain(folder / "flower.jpg", "--methods", "saliency", "--target", "985", "--out", out) == 0
    assert json.loads((out / "summary.json").read_text())["images"]["flower.jpg"]["target"] == 985
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\nflower.jpg,goldfish\ngray.png,7\n")
    out2 = tmp_path / "out2"
    assert _explain(folder / "flower.jpg", folder / "sub" / "gray.png", folder / "deep16.png", "--methods", "saliency",
                    "--target", labels, "--out", out2) == 0
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["images"]["flower.jpg"]["target"] == 1 and summary["images"]["gray.png"]["target"] == 7
    assert [Path(s["source"]).name for s in summary["skipped"]] == ["deep16.png"]  # no label
    # the map for a class differs from the map for another class
    assert not np.array_equal(np.load(_files(out, "flower.jpg")["saliency.npy"]),
                              np.load(_files(out2, "flower.jpg")["saliency.npy"]))


def test_list_file_and_duplicate_names(folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images\n{folder / 'flower.jpg'}\n\ninputs/sub/gray.png\nmissing.png\n")
    shutil.copytree(folder, tmp_path / "copy")
    out = tmp_path / "out"
    assert _explain(listing, tmp_path / "copy" / "flower.jpg", "--methods", "saliency", "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["images"]) == ["flower.jpg", "flower.jpg~2", "gray.png"]
    assert [Path(s["source"]).name for s in summary["skipped"]] == ["missing.png"]


TINY_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1000))
    """
)


@pytest.fixture()
def tiny_model(tmp_path, monkeypatch):
    (tmp_path / "tiny_model.py").write_text(TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    return "tiny_model:build"


def test_user_model_from_module_function(folder, tmp_path, tiny_model):
    out = tmp_path / "out"
    assert _explain(folder, "--model", tiny_model, "--methods", "gradcam,occlusion", "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == "3"  # the last layer with a spatial output
    assert np.load(_files(out, "inputs/flower.jpg")["occlusion.npy"]).shape == (3, 224, 224)


def test_two_torchrun_ranks_equal_one_process(folder, tmp_path, tiny_model):
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = ["--model", tiny_model, "--methods", "gradcam,saliency", "--batch-size", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "interp_ext.cli", "explain", str(folder), "--out", str(single), *common],
                   check=True, env=env, cwd=tmp_path, timeout=600)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "interp_ext.cli", "explain", str(folder), "--out", str(multi), *common],
                         env=env, cwd=tmp_path, timeout=600, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (single, multi))
    assert a["images"].keys() == b["images"].keys() and b["timing"]["ranks"] == 2
    for key in a["images"]:
        assert a["images"][key]["target"] == b["images"][key]["target"]
        assert a["images"][key]["files"] == b["images"][key]["files"]  # the ranks agree on every folder
        for m in ("gradcam", "saliency"):
            np.testing.assert_allclose(np.load(_files(single, key)[f"{m}.npy"]),
                                       np.load(_files(multi, key)[f"{m}.npy"]), rtol=1e-4, atol=1e-5)
    assert sorted(s["source"] for s in a["skipped"]) == sorted(s["source"] for s in b["skipped"])


def test_every_rank_adopts_rank_0s_folders(folder, tmp_path, tiny_model):
    """Ranks whose --out are different disks: each rank's records differ, yet every rank
    writes each image into the folder rank 0 worked out from its own records."""
    import argparse
    import threading

    import torch.distributed as dist

    from interp_ext.ranks import Ranks

    d = tmp_path / "in"
    d.mkdir()
    for name in ("0.jpg", "a.jpg", "a.png"):
        shutil.copy(folder / "flower.jpg", d / name)
    disks = [tmp_path / "rank0", tmp_path / "rank1"]  # the same --out on two machines
    common = ["--model", tiny_model, "--methods", "saliency"]
    assert _explain(d / "a.png", "--out", disks[0], *common) == 0  # an earlier run on rank 0's disk only
    assert _files(disks[0], "a.png")["input"].parent == disks[0] / "images" / "a"
    store, codes, errors = dist.HashStore(), [None, None], []

    def rank(r):
        try:
            config = explain.ExplainConfig(inputs=[str(d / n) for n in ("0.jpg", "a.jpg", "a.png")], out=disks[r],
                                           methods=["saliency"], model=tiny_model, quiet=True, workers=1)
            state = {}
            try:
                with Ranks(r, 2, store=store) as ranks:
                    codes[r] = cli._explain_phases(config, argparse.Namespace(quiet=True), ranks, state)
            finally:
                for held in (state.get("prep"), state.get("checked")):
                    if held is not None and held.lock is not None:
                        held.lock.release()
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and codes == [0, 0], (errors, codes)
    summary = json.loads((disks[0] / "summary.json").read_text())
    folders = {key: e["files"]["input"].rsplit("/", 1)[0] for key, e in summary["images"].items()}
    assert folders == {"0.jpg": "images/0", "a.jpg": "images/a.jpg", "a.png": "images/a"}  # rank 1 wrote a.jpg
    assert (disks[1] / "images" / "a.jpg" / "saliency.npy").is_file() and not (disks[1] / "images" / "a").exists()
    assert len(list((disks[1] / "records").iterdir())) == 1  # rank 1's own image only


def test_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "gradcam" in info["ops"] and info["torch_runtime"].startswith(torch.__version__.split("+")[0])


def test_gallery_renders_in_headless_chromium(folder, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("Chromium is not installed")
    out = tmp_path / "out"
    assert _explain(folder, "--methods", "gradcam,saliency", "--out", out) == 0
    # a script in a copy of the page reports how many images decoded
    page = (out / "index.html").read_text().replace(
        "</body>",
        "<script>window.onload=()=>{const i=[...document.images];"
        "document.title='loaded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+' of '+i.length;};</script></body>",
    )
    probe = out / "probe.html"
    probe.write_text(page)
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    images = 3 * 4  # input + 2 methods for 4 images
    assert f"<title>loaded {images} of {images}</title>" in res.stdout


@pytest.mark.parametrize(
    "kind, extra, names",
    [
        ("class", ["--target", "985,1", "--size", "64", "--steps", "3"], ["class_985_daisy.png", "class_1_goldfish.png"]),
        ("channel", ["--layer", "_blocks.4", "--channel", "2", "--size", "64", "--steps", "3"], ["channel__blocks.4_2.png"]),
        ("dream", ["IMAGE", "--layer", "_blocks.4", "--octaves", "1", "--steps", "2"], ["dream_flower.png"]),
        ("invert", ["IMAGE", "--layer", "_blocks.2", "--steps", "3"], ["invert_flower.png"]),
        ("fool", ["IMAGE", "--target-class", "1", "--steps", "2"], ["fool_flower.png"]),
    ],
)
def test_visualize_commands_write_pngs(folder, tmp_path, capsys, kind, extra, names):
    out = tmp_path / "vis"
    args = [str(folder / "flower.jpg") if a == "IMAGE" else a for a in extra]
    assert cli.main(["visualize", kind, *args, "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    with Image.open(out / names[0]) as im:
        assert im.mode == "RGB"
    if kind == "fool":
        assert "flower:" in capsys.readouterr().out


def test_visualize_bad_arguments(tmp_path, capsys):
    assert cli.main(["visualize", "class", "--target", "a,b", "--out", str(tmp_path / "v")]) == 2
    assert "--target must be a comma list of integers" in capsys.readouterr().err
    assert cli.main(["visualize", "dream", str(tmp_path / "none.jpg"), "--layer", "_blocks.4", "--out", str(tmp_path / "v")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["visualize", "channel", "--layer", "_blocks.99", "--channel", "1", "--out", str(tmp_path / "v"),
                     "--steps", "1"]) == 2
    assert not (tmp_path / "v").exists()
