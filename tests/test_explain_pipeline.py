"""The pipelined job: readers ahead of the model and writers behind it, memory bounded on
any number of images, a write error that stops it cleanly, progress and --quiet; the
method options (--occlusion-window ... --perturbations-per-eval, --workers) reaching the
methods and the records; the one-call interface ``maps, logits = compute_batch(x, targets)``.

A tiny model and small random images, as tests/test_job_reliability.py: fast."""
import errno
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interp_ext import cli, explain, inputs, registry, writers

from test_cli import TINY_MODEL as TINY  # noqa: E402  (the same tiny model, under its own module name below)
MODEL = "pipe_tiny_model:build"


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    (tmp_path / "pipe_tiny_model.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    return MODEL


def _images(folder: Path, n: int, size=(40, 32)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
    return folder


def _config(tmp_path, images, **kw):
    kw.setdefault("methods", ["saliency"])
    return explain.ExplainConfig(inputs=[str(images)], out=tmp_path / "out", model=MODEL, quiet=True, **kw)


def _records(out: Path) -> list[Path]:
    return sorted((out / "records").glob("*.json"))


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _explain(*args):
    return cli.main(["explain", *map(str, args), "--quiet"])


# ---- the pipeline ------------------------------------------------------------------------------


def test_reader_runs_ahead_and_writer_behind_the_model(tmp_path, tiny, monkeypatch):
    """Batch 1 is read while the model computes batch 0, and batch 0 is written while the
    model computes batch 1. A job that reads, computes and writes in turn fails both (each
    wait below times out)."""
    images = _images(tmp_path / "in", 6)
    prep = explain.prepare(_config(tmp_path, images, batch_size=2, workers=2))
    keys = [im.key for im in prep.images]
    batch0, batch1 = set(keys[:2]), set(keys[2:4])
    read_batch1, model_on_batch1 = threading.Event(), threading.Event()
    seen = {"read ahead": None, "written behind": []}

    real_load = inputs.load_crop

    def load_crop(image, loaded):
        if image.key in batch1:
            read_batch1.set()
        return real_load(image, loaded)

    real_write = writers.write_image

    def write_image(out, image, *a, **k):
        if image.key in batch0:
            seen["written behind"].append(model_on_batch1.wait(10))
        return real_write(out, image, *a, **k)

    monkeypatch.setattr(inputs, "load_crop", load_crop)
    monkeypatch.setattr(writers, "write_image", write_image)
    real_compute, calls = prep.compute_batch, []

    def compute(x, targets):
        calls.append(x.shape[0])
        if len(calls) == 1:
            seen["read ahead"] = read_batch1.wait(10)
        if len(calls) == 2:
            model_on_batch1.set()
        return real_compute(x, targets)

    prep.compute_batch = compute
    try:
        part = explain.run(prep)
    finally:
        prep.close()
    assert calls == [2, 2, 2] and part["processed"] == 6
    assert seen["read ahead"] is True
    assert seen["written behind"] == [True, True]
    assert len(_records(tmp_path / "out")) == 6


def test_images_in_flight_stay_bounded(tmp_path, tiny, monkeypatch):
    """Fast reads and a slow model: the images read but not yet written never exceed the
    pipeline's bound (an unbounded read-ahead would hold all 40)."""
    images = _images(tmp_path / "in", 40, size=(16, 16))
    prep = explain.prepare(_config(tmp_path, images, batch_size=2, workers=2))
    lock, alive, peak = threading.Lock(), [0], [0]
    real_load, real_write = inputs.load_crop, writers.write_image

    def load_crop(image, loaded):
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        return real_load(image, loaded)

    def write_image(*a, **k):
        try:
            return real_write(*a, **k)
        finally:
            with lock:
                alive[0] -= 1

    monkeypatch.setattr(inputs, "load_crop", load_crop)
    monkeypatch.setattr(writers, "write_image", write_image)
    real_compute = prep.compute_batch

    def slow(x, targets):
        time.sleep(0.03)
        return real_compute(x, targets)

    prep.compute_batch = slow
    try:
        assert explain.run(prep)["processed"] == 40
    finally:
        prep.close()
    bound = explain.pipeline_limits(2, 2)["in_flight"]
    assert bound < 40 and 2 <= peak[0] <= bound
    assert alive[0] == 0


def test_a_write_error_stops_the_pipeline_cleanly(tmp_path, tiny, monkeypatch, capsys):
    """The fifth map cannot be written: one line, exit 1, no temporary file, a record only
    for images whose files are all there, and the writes not yet started are dropped."""
    images = _images(tmp_path / "in", 12)
    out = tmp_path / "out"
    real_save, calls, lock = np.save, [0], threading.Lock()

    def save(fh, arr, *a, **k):
        with lock:
            calls[0] += 1
            n = calls[0]
        if n == 5:
            fh.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(fh, arr, *a, **k)

    monkeypatch.setattr(np, "save", save)
    assert _explain(images, "--model", tiny, "--methods", "saliency", "--batch-size", "2", "--workers", "3",
                    "--out", out) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interp-ext explain: error: cannot write ")
    assert "No space left on device" in err and "Traceback" not in err
    assert [p for p in out.rglob("*") if p.name.endswith(".tmp")] == []
    records = _records(out)
    assert 1 <= len(records) < 12
    for rec in map(writers.read_record, records):  # every recorded image is complete
        assert rec is not None and writers.files_exist(out, rec["files"])
        np.load(out / rec["files"]["saliency.npy"])
    assert len(writers.read_records(out)) == len(records)
    assert calls[0] <= 5 + 3  # at most the writes already running went on; none started after
    monkeypatch.setattr(np, "save", real_save)
    assert _explain(images, "--model", tiny, "--methods", "saliency", "--out", out) == 0
    summary = _summary(out)
    assert len(summary["images"]) == 12 and summary["timing"]["processed_this_run"] == 12 - len(records)


def test_progress_per_image_and_quiet(tmp_path, tiny, capsys):
    images = _images(tmp_path / "in", 3)
    args = ["explain", str(images), "--model", tiny, "--methods", "saliency", "--out", str(tmp_path / "o1")]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "explain" in captured.err and "3/3" in captured.err and "img/s" in captured.err  # count, rate
    assert "explained 3 images" in captured.out
    args[-1] = str(tmp_path / "o2")
    assert cli.main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# ---- options -----------------------------------------------------------------------------------


def test_options_reach_the_methods_and_the_records(tmp_path, tiny, monkeypatch):
    from interp_ext import Occlusion, ShapleySampling, SmoothGrad

    seen = {}

    def spy(cls, name, record):
        real = getattr(cls, name)

        def wrapper(self, *a, **k):
            seen.setdefault(cls.__name__, []).append(record(self, a, k))
            return real(self, *a, **k)
        monkeypatch.setattr(cls, name, wrapper)

    spy(Occlusion, "attribute", lambda self, a, k: (tuple(a[1]), tuple(a[2]), k["perturbations_per_eval"]))
    spy(ShapleySampling, "attribute", lambda self, a, k: (int(a[1].max()) + 1, k["n_samples"],
                                                            k["perturbations_per_eval"]))
    spy(SmoothGrad, "noisy_mean", lambda self, a, k: (self.n_samples, self.batch_size))  # (the planner resolved the target)
    images = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    common = [images, "--model", tiny, "--methods", "occlusion,shapley,smoothgrad", "--batch-size", "2",
              "--out", out, "--occlusion-stride", "28", "--shapley-patch", "112", "--shapley-samples", "2",
              "--smoothgrad-samples", "3"]
    assert _explain(*common, "--occlusion-window", "56", "--perturbations-per-eval", "6") == 0
    assert seen["Occlusion"] == [((3, 56, 56), (3, 28, 28), 3)]  # 6 copies per call over 2 images
    assert seen["ShapleySampling"] == [(4, 2, 3)]  # 2 x 2 patches of 112 px, 2 permutations
    assert seen["SmoothGrad"] == [(3, 2)]  # 3 samples; 6 // 4 copies per call, at least the batch
    rec = writers.read_record(_records(out)[0])
    assert rec["methods"]["occlusion"]["options"] == {"window": [3, 56, 56], "strides": [3, 28, 28], "baseline": 0}
    assert rec["methods"]["shapley"]["options"]["patch"] == 112 and rec["methods"]["shapley"]["options"]["n_samples"] == 2
    assert rec["methods"]["smoothgrad"]["options"]["n_samples"] == 3
    assert rec["execution"] == {"batch_size": 2, "perturbations_per_eval": 6}
    assert _summary(out)["config"]["execution"]["perturbations_per_eval"] == 6
    # resume: the memory bound changes no map; a window does
    assert _explain(*common, "--occlusion-window", "56", "--perturbations-per-eval", "8") == 0
    assert _summary(out)["timing"]["processed_this_run"] == 0
    assert _explain(*common, "--occlusion-window", "32", "--perturbations-per-eval", "6") == 0
    assert _summary(out)["timing"]["processed_this_run"] == 2
    assert writers.read_record(_records(out)[0])["methods"]["occlusion"]["options"]["window"] == [3, 32, 32]


def test_default_perturbations_bound_the_model_batch(tmp_path, tiny):
    """Batch 4 x 64 occluded copies each was 256 images per model call (8 x 64 = 512 at
    the default batch): now the copies of a call over the whole batch stay at 64."""
    images = _images(tmp_path / "in", 4)
    settings = registry.Settings(occlusion_window=32, occlusion_stride=32)  # 49 windows per image
    prep = explain.prepare(_config(tmp_path, images, methods=["occlusion", "smoothgrad"], batch_size=4,
                                   settings=settings))
    sizes = []
    hook = prep.loaded.model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        assert explain.run(prep)["processed"] == 4
    finally:
        hook.remove()
        prep.close()
    assert max(sizes) == 64 and registry.Settings().perturbations_per_eval == 64
    assert registry.copies_per_image(64, 8) == 8 and registry.copies_per_image(64, 100) == 1


def test_help_is_plain_text_with_the_resolved_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--occlusion-window PX", 16), ("--occlusion-stride PX", 8), ("--smoothgrad-samples N", 16),
                          ("--shapley-patch PX", 32), ("--shapley-samples N", 8), ("--perturbations-per-eval N", 64),
                          ("--workers N", explain.default_workers()), ("--batch-size N", 8)]:
        after = text[text.rindex(flag):]  # its line under "options:", not the usage line
        assert f"(default: {default}" in after[:400], flag
    for markup in ("``", ":func:", ":class:", ":mod:"):
        assert markup not in text


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be a positive integer, got 0"),
    (["--occlusion-window", "8", "--occlusion-stride", "9"], "--occlusion-stride 9 must not exceed --occlusion-window 8"),
    (["--smoothgrad-samples", "0"], "--smoothgrad-samples must be a positive integer"),
    (["--perturbations-per-eval", "-1"], "--perturbations-per-eval must be a positive integer"),
    (["--methods", "occlusion", "--occlusion-window", "300"], "--occlusion-window 300 is larger than the model's input"),
])
def test_bad_settings_fail_before_any_output(tmp_path, tiny, capsys, args, message):
    images = _images(tmp_path / "in", 1)
    assert _explain(images, "--model", tiny, "--out", tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---- the interface to the planner ---------------------------------------------------------------


def test_one_call_computes_a_batch(tmp_path, tiny):
    """compute_batch(x, targets) -> ({method: maps}, logits) with the runners' shapes; the
    job writes exactly what it returns (a replacement is all the job needs)."""
    images = _images(tmp_path / "in", 3)
    prep = explain.prepare(_config(tmp_path, images, methods=["gradcam", "guided-backprop", "occlusion"],
                                   batch_size=2, settings=registry.Settings(occlusion_window=56, occlusion_stride=56)))
    try:
        x = torch.randn(2, 3, 224, 224)
        maps, logits = prep.compute_batch(x, None)
        assert set(maps) == {"gradcam", "guided-backprop", "occlusion"} and logits.shape == (2, 1000)
        assert maps["gradcam"].shape == (2, 224, 224) and maps["guided-backprop"].shape == (2, 3, 224, 224)
        assert maps["occlusion"].shape == (2, 3, 224, 224)
        fixed, _ = prep.compute_batch(x, torch.tensor([3, 5]))
        assert not torch.equal(fixed["guided-backprop"], maps["guided-backprop"]) or logits.argmax(1).tolist() == [3, 5]
        got = []

        def fake(x, targets):
            got.append((x.shape, targets))
            b = x.shape[0]
            logits = torch.zeros(b, 1000)
            logits[:, 7] = 1
            return {"gradcam": torch.full((b, 224, 224), 2.0), "guided-backprop": torch.full((b, 3, 224, 224), 3.0),
                    "occlusion": torch.full((b, 3, 224, 224), 4.0)}, logits

        prep.compute_batch = fake
        part = explain.run(prep)
    finally:
        prep.close()
    assert [shape[0] for shape, _ in got] == [2, 1] and all(t is None for _, t in got)
    out = tmp_path / "out"
    for entry in part["images"].values():
        assert entry["target"] == 7
        folder = out / Path(entry["files"]["gradcam.npy"]).parent
        assert (np.load(folder / "gradcam.npy") == 2).all() and (np.load(folder / "occlusion.npy") == 4).all()
        assert (np.load(folder / "guided-backprop.npy") == 3).all()


def test_images_not_discovered_get_folders_apart_from_the_others(tmp_path, tiny):
    """run(prep, images=...) with an image check() did not find: its folder is worked out
    with all the others' (not on its own, where in/im000.gif would take in/im000.png's)."""
    images = _images(tmp_path / "in", 2)
    prep = explain.prepare(_config(tmp_path, images))
    out = tmp_path / "out"
    try:
        first = explain.run(prep)
        assert {k: e["files"]["input"] for k, e in first["images"].items()} == {
            "in/im000.png": "images/in/im000/input.png", "in/im001.png": "images/in/im001/input.png"}
        kept = (out / "images/in/im000/saliency.npy").read_bytes()
        extra = inputs.InputImage(images / "im001.png", "in/im000.gif")  # another picture, a stem taken
        part = explain.run(prep, images=[extra])
    finally:
        prep.close()
    assert part["images"]["in/im000.gif"]["files"]["input"] == "images/in/im000.gif/input.png"
    assert (out / "images/in/im000/saliency.npy").read_bytes() == kept  # the other image's files untouched
    assert prep.folders["in/im000.gif"] == "images/in/im000.gif"
    # a process that did not claim (prepare(owner=False)) finds the folders from the records
    prep = explain.prepare(_config(tmp_path, images), owner=False)
    try:
        assert explain.run(prep)["processed"] == 0
        assert prep.folders == {"in/im000.png": "images/in/im000", "in/im001.png": "images/in/im001"}
    finally:
        prep.close()
    # and the folder is never left to outputs_of or write_image to guess
    with pytest.raises(TypeError):
        writers.outputs_of(out, extra, ["saliency"])
    with pytest.raises(ValueError, match="must be a folder under images/"):
        writers.outputs_of(out, extra, ["saliency"], None)


def test_one_helper_finds_the_layers_and_rejects_1x1_maps(tiny):
    from interp_ext import models

    model = models.load_model(MODEL, None).model
    assert registry.layer_outputs(model, 224) == [("0", 56, 56), ("1", 56, 56), ("2", 28, 28), ("3", 28, 28),
                                                  ("4", 1, 1)]
    assert registry.spatial_layers(model, 224) == ["0", "1", "2", "3"]  # the pooled 1x1 map is no CAM layer
    assert registry.default_layer("tiny", model, 224) == "3"
    explain.check_layer(model, "2", 224)
    with pytest.raises(inputs.ExplainError, match=r"--layer: layer '4' outputs a 1x1 map.*valid layers \(4, "):
        explain.check_layer(model, "4", 224)


def test_no_tune_keeps_the_exact_batching(tmp_path, tiny, monkeypatch):
    from interp_ext import engine

    sizes = {}
    real = engine.Explainer._gradient_pass

    def spy(self, x, *a):
        sizes.setdefault(self.tune, []).append(x.shape[0])
        return real(self, x, *a)

    monkeypatch.setattr(engine.Explainer, "_gradient_pass", spy)
    images = _images(tmp_path / "in", 8)
    assert _explain(images, "--model", tiny, "--methods", "saliency", "--batch-size", "4", "--out", tmp_path / "a",
                    "--no-tune") == 0
    assert sizes == {False: [4, 4]}  # one gradient pass per batch of 4
    sizes.clear()
    assert _explain(images, "--model", tiny, "--methods", "saliency", "--batch-size", "4", "--out", tmp_path / "b") == 0
    assert list(sizes) == [True] and sum(sizes[True]) == 8 and len(sizes[True]) > 2  # tried chunks of 1, 2, 4 ...
    for name in ("im000", "im005"):
        a, b = (np.load(next((tmp_path / d).rglob(f"{name}*/saliency.npy"))) for d in ("a", "b"))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_perturbations_per_eval_bounds_every_perturbation_method():
    from interp_ext import registry
    from interp_ext.explain import engine_options

    settings = registry.Settings(perturbations_per_eval=24)
    methods = ["occlusion", "shapley", "smoothgrad", "scorecam", "ablationcam"]
    got = engine_options(registry.method_options(methods, settings), settings, batch=4)
    assert got["scorecam"]["batch_size"] == got["ablationcam"]["batch_size"] == 24
    assert got["occlusion"]["perturbations_per_eval"] == got["shapley"]["perturbations_per_eval"] == 6  # per image x 4
