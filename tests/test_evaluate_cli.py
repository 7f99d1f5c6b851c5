"""`interp-ext evaluate` end to end: the table (CSV + JSON) against the metric functions
called directly, the summary, the plot, the page; resume (no model work on a re-run, only
the new pairs after a change), --force; bad arguments before the model loads; the explain
gallery of the same --out showing the scores; masks and the localisation metrics; two
ranks equal to one process; the bundled model on two photos.

A tiny model and small random images (as tests/test_explain_pipeline.py), small metric
settings: each test takes a few seconds."""
import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interp_ext import cli, evaluate, explain, inputs, models
from interp_ext.engine import Explainer
from interp_ext.metrics import faithfulness

from test_cli import TINY_MODEL as TINY  # noqa: E402

MODEL = "eval_tiny_model:build"
METRICS = ["pixel-flipping", "region-perturbation", "selectivity", "deletion", "insertion"]
# small settings at 224 x 224: 12, 4, 16, 5 and 5 points per curve
OPTIONS = ["pixel-flipping.features_in_step=12544", "region-perturbation.patch_size=56",
           "region-perturbation.regions_evaluation=4", "selectivity.patch_size=56",
           "deletion.pixels_per_step=12544", "insertion.pixels-per-step=12544"]
KWARGS = {"pixel-flipping": {"features_in_step": 12544}, "region-perturbation": {"patch_size": 56, "regions_evaluation": 4},
          "selectivity": {"patch_size": 56}, "deletion": {"pixels_per_step": 12544},
          "insertion": {"pixels_per_step": 12544}}
POINTS = {"pixel-flipping": 12, "region-perturbation": 4, "selectivity": 16, "deletion": 5, "insertion": 5}


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    (tmp_path / "eval_tiny_model.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    return MODEL


def _images(folder: Path, n: int, size=(40, 32)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def _options(metrics):
    return [a for o in OPTIONS if o.split(".")[0] in metrics for a in ("--metric-option", o)]


def _evaluate(images, out, methods, metrics, *extra, model=MODEL):
    return cli.main(["evaluate", str(images), "--model", model, "--methods", ",".join(methods), "--metrics",
                     ",".join(metrics), *_options(metrics), "--out", str(out), "--quiet", *map(str, extra)])


def _table(out: Path) -> dict:
    return json.loads((out / "scores.json").read_text())


def _direct(images: list[Path], model_spec: str, methods, metrics, tune: bool, kwargs=KWARGS, areas=True) -> dict:
    """(image name, method, metric) -> (area, curve) from the metric functions themselves,
    on the maps of the planner, as the job's one batch of these images (`areas`: from
    ``return_auc_per_sample=True``; else None)."""
    loaded = models.load_model(model_spec, None)
    x = torch.stack([inputs.load_crop(inputs.InputImage(p, p.name), loaded)[1] for p in images])
    layer = explain.default_layer(loaded.name, loaded.model, loaded.input_size)
    expl = Explainer(loaded.model, methods, layer, tune=tune).explain(x)
    out = {}
    for m in methods:
        a = expl.maps[m]
        a = a[:, None] if a.dim() == 3 else a.sum(1, keepdim=True)  # (N, 1, H, W)
        for k in metrics:
            fn = getattr(faithfulness, k.replace("-", "_"))
            kw = dict(kwargs[k], tune=tune)
            curves = fn(loaded.model, x, a, expl.target, **kw)
            auc = fn(loaded.model, x, a, expl.target, **kw, return_auc_per_sample=True) if areas else None
            for i, p in enumerate(images):
                out[(p.name, m, k)] = (None if auc is None else float(auc[i]), curves[i].tolist())
    return out


def test_table_plot_and_page_agree_with_the_metric_functions(tmp_path, tiny, capsys):
    pd = pytest.importorskip("pandas")
    images = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    methods = ["gradcam", "guided-backprop"]  # a heat map, and an input-shaped map summed over its channels
    assert cli.main(["evaluate", str(images), "--model", tiny, "--methods", ",".join(methods), *_options(METRICS),
                     "--out", str(out), "--no-tune"]) == 0  # the default --metrics: the five curves
    printed = capsys.readouterr().out
    assert printed.startswith("scores: mean ± std over 2 images\n") and "scored 2 images this run" in printed
    df = pd.read_csv(out / "scores.csv")
    assert list(df.columns) == list(evaluate.CSV_COLUMNS) and len(df) == 2 * len(methods) * len(METRICS)
    assert set(df["method"]) == set(methods) and set(df["metric"]) == set(METRICS) and df["score"].notna().all()
    assert (df["curve_points"] == df["metric"].map(POINTS)).all()
    table = _table(out)
    assert table["methods"] == methods and table["metrics"] == METRICS and len(table["rows"]) == len(df)
    expected = _direct(sorted(images.iterdir()), tiny, methods, METRICS, tune=False)
    for row in table["rows"]:
        area, curve = expected[(Path(row["image"]).name, row["method"], row["metric"])]
        # float32 rounding: the patch metrics' incremental chains group the images per call as they come
        np.testing.assert_allclose(row["score"], area, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(row["curve"], curve, rtol=1e-6, atol=1e-9)
    for r, row in zip(df.itertuples(), table["rows"]):  # the CSV holds the JSON's numbers, in the same order
        assert (r.image, r.method, r.metric, r.target) == (row["image"], row["method"], row["metric"], row["target"])
        assert r.score == row["score"]
    # the summary: mean and sample std (pandas') per method and metric, and which way is better
    stats = df.groupby(["method", "metric"])["score"].agg(["mean", "std", "count"])
    for (m, k), s in stats.iterrows():
        got = table["summary"][m][k]
        assert got["n"] == s["count"] == 2 and got["better"] == evaluate.METRICS[k].better
        np.testing.assert_allclose([got["mean"], got["std"]], [s["mean"], s["std"]], rtol=1e-12)
    assert f"{table['summary']['gradcam']['deletion']['mean']:.4f}" in printed
    with Image.open(out / "curves.png") as plot:  # one panel per curve metric: 3 x 2
        assert plot.format == "PNG" and plot.size[0] > plot.size[1] > 400
    page = (out / "index.html").read_text()  # no explain gallery here: the page of its own
    assert "<h2>Scores</h2>" in page and 'src="curves.png"' in page and 'href="scores.csv"' in page
    assert page.count("<tr><th>in/im") == 2
    assert len(list((out / "records" / "scores").glob("*.json"))) == 2 and not list(out.rglob("*.tmp"))
    assert not list((out / "records").glob("*.json"))  # no explain record: evaluate writes no map


def _counting(monkeypatch):
    """Counts of the planner's batches and of each metric function's calls."""
    calls = {"maps": 0}
    real = explain.BatchComputer.__call__

    def maps(self, *a, **k):
        calls["maps"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(explain.BatchComputer, "__call__", maps)
    for k in METRICS:
        name = k.replace("-", "_")
        fn = getattr(faithfulness, name)

        def wrapper(*a, _fn=fn, _k=k, **kw):
            calls[_k] = calls.get(_k, 0) + 1
            return _fn(*a, **kw)

        monkeypatch.setattr(faithfulness, name, wrapper)
    return calls


def test_resume_new_pairs_only_and_force(tmp_path, tiny, monkeypatch):
    images = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert _evaluate(images, out, ["saliency"], ["deletion"]) == 0
    records = sorted((out / "records" / "scores").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    first = _table(out)
    calls = _counting(monkeypatch)
    # the same command: no model work, the records untouched, the same table
    assert _evaluate(images, out, ["saliency"], ["deletion"]) == 0
    assert calls == {"maps": 0}
    assert [p.stat().st_mtime_ns for p in records] == stamps
    second = _table(out)
    assert second["rows"] == first["rows"] and second["timing"]["processed_this_run"] == 0
    # a metric added: only its pairs are scored (the maps once, for the one batch)
    assert _evaluate(images, out, ["saliency"], ["deletion", "insertion"]) == 0
    assert calls == {"maps": 1, "insertion": 1}
    third = _table(out)
    assert [r for r in third["rows"] if r["metric"] == "deletion"] == first["rows"]
    # a changed option of one metric: that metric only
    calls.clear()
    calls["maps"] = 0
    assert _evaluate(images, out, ["saliency"], ["deletion", "insertion"], "--metric-option",
                     "insertion.canvas=zeros") == 0
    assert calls == {"maps": 1, "insertion": 1}
    assert _table(out)["config"]["metrics"]["insertion"]["canvas"] == "zeros"
    # the earlier metrics stay in the records when fewer are asked for; --force scores every pair again
    calls.clear()
    calls["maps"] = 0
    assert _evaluate(images, out, ["saliency"], ["deletion"], "--force") == 0
    assert calls == {"maps": 1, "deletion": 1}
    rec = json.loads(records[0].read_text())
    assert set(rec["scores"]["saliency"]) == {"deletion", "insertion"}
    again = _table(out)["rows"]  # the same numbers again (to the tuner's float rounding)
    assert [(r["image"], r["metric"]) for r in again] == [(r["image"], r["metric"]) for r in first["rows"]]
    np.testing.assert_allclose([r["score"] for r in again], [r["score"] for r in first["rows"]], rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--metrics", "delection"], "--metrics: unknown metric delection (did you mean deletion?); choose from"),
    (["--metrics", ""], "--metrics: unknown metric (none given)"),
    (["--methods", "gradcan"], "--methods: unknown method gradcan (did you mean gradcam"),
    (["--metric-option", "deletion.pixels_per_step"], "--metric-option must be NAME.KEY=VALUE"),
    (["--metric-option", "deletion.pixel_per_step=4"],
     "deletion has no option 'pixel_per_step' (did you mean pixels_per_step?); its options: pixels_per_step"),
    (["--metric-option", "deletoin.canvas=blur"], "unknown metric deletoin (did you mean deletion?)"),
    (["--metric-option", "insertion.canvas=blur"], "insertion is not in --metrics (deletion)"),
    (["--metric-option", "deletion.pixels_per_step=0"], "deletion.pixels_per_step: a positive integer or none, got 0"),
    (["--metric-option", "deletion.canvas=grey"], "deletion.canvas: one of zeros, blur or a number, got 'grey'"),
    (["--metric-option", "deletion.softmax=maybe"], "deletion.softmax: true or false, got 'maybe'"),
])
def test_bad_arguments_fail_before_the_model_loads(tmp_path, tiny, monkeypatch, capsys, args, message):
    images = _images(tmp_path / "in", 1)
    loads = []
    monkeypatch.setattr(explain, "load_model", lambda *a: loads.append(a))
    argv = ["evaluate", str(images), "--model", tiny, "--metrics", "deletion", "--out", str(tmp_path / "out"), *args]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "interp-ext evaluate: error: --m" in err and message in " ".join(err.split()), err
    assert not loads and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--masks", "masks"], "--masks: only the localisation metrics"),
    (["--metric-option", "deletion.pixels_per_step=4", "--occlusion-window", "0"], "--occlusion-window must be"),
    (["--batch-size", "0"], "--batch-size must be positive"),
])
def test_bad_settings_exit_2_before_the_model_loads(tmp_path, tiny, monkeypatch, capsys, args, message):
    images = _images(tmp_path / "in", 1)
    (tmp_path / "masks").mkdir()
    loads = []
    monkeypatch.setattr(explain, "load_model", lambda *a: loads.append(a))
    assert cli.main(["evaluate", str(images), "--model", tiny, "--metrics", "deletion", "--out", str(tmp_path / "out"),
                     *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"interp-ext evaluate: error: {message}") and err.count("\n") == 1, err
    assert not loads and not (tmp_path / "out").exists()


def test_options_that_need_the_input_size_fail_before_any_image(tmp_path, tiny, capsys):
    images = _images(tmp_path / "in", 1)
    assert cli.main(["evaluate", str(images), "--model", tiny, "--metrics", "pixel-flipping,selectivity",
                     "--metric-option", "pixel-flipping.features_in_step=1000", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "features_in_step=1000 must divide the model's input H * W = 224 x 224 = 50176 (e.g. 3136: 48 steps)" in err
    assert cli.main(["evaluate", str(images), "--model", tiny, "--metrics", "selectivity",
                     "--metric-option", "selectivity.patch_size=300", "--out", str(tmp_path / "out")]) == 2
    assert "selectivity.patch_size=300 is larger than the model's input size 224" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_explain_gallery_shows_the_scores(tmp_path, tiny):
    images = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    explain_args = ["explain", str(images), "--model", tiny, "--methods", "gradcam,saliency", "--out", str(out), "--quiet"]
    assert cli.main(explain_args) == 0
    assert "<h2>Scores</h2>" not in (out / "index.html").read_text()
    assert _evaluate(images, out, ["gradcam", "saliency"], ["deletion", "insertion"]) == 0
    page = (out / "index.html").read_text()
    table = _table(out)
    assert 'src="images/in/im0/gradcam.png"' in page  # still explain's gallery, with the pictures
    assert "<h2>Scores</h2>" in page and 'href="scores.csv"' in page and 'href="curves.png"' in page
    for row in table["rows"]:  # each picture's scores under it
        assert f"{row['metric']}: {row['score']:.4g}" in page
    s = table["summary"]["gradcam"]["deletion"]
    assert f"{s['mean']:.4g} &plusmn; {s['std']:.4g} <small>(2)</small>" in page
    assert page.count('<div class="scores">') == 4
    # explain again (another method): its gallery keeps the scores of the maps it still shows
    assert cli.main(explain_args[:5] + ["gradcam,guided-backprop"] + explain_args[6:]) == 0
    page = (out / "index.html").read_text()
    assert page.count('<div class="scores">') == 2 and "<h2>Scores</h2>" in page  # gradcam's, not saliency's
    # another target: other maps, no scores shown for them
    assert cli.main(explain_args + ["--target", "3"]) == 0
    assert '<div class="scores">' not in (out / "index.html").read_text()


def test_masks_give_the_localisation_scores(tmp_path, tiny):
    loc = pytest.importorskip("interp_ext.metrics.localisation")
    images = _images(tmp_path / "in", 3, size=(64, 64))
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(2):  # im2 has no mask
        m = np.zeros((64, 64), np.uint8)
        m[8 * (i + 1): 40, 16:48] = 255
        Image.fromarray(m).save(masks / f"im{i}.png")
    out = tmp_path / "out"
    metrics = ["pointing-game", "energy-pointing-game", "deletion"]
    assert _evaluate(images, out, ["gradcam"], metrics, "--masks", masks, "--metric-option",
                     "pointing-game.tolerance=2") == 0
    rows = {(Path(r["image"]).name, r["metric"]): r for r in _table(out)["rows"]}
    assert rows[("im2.png", "pointing-game")]["score"] is None and "no mask" in rows[("im2.png", "pointing-game")]["error"]
    assert rows[("im2.png", "deletion")]["score"] is not None
    loaded = models.load_model(tiny, None)
    paths = [images / "im0.png", images / "im1.png"]
    x = torch.stack([inputs.load_crop(inputs.InputImage(p, p.name), loaded)[1] for p in paths])
    a = Explainer(loaded.model, ["gradcam"], "3").explain(x).maps["gradcam"][:, None]
    crops = torch.stack([torch.from_numpy(np.asarray(loaded.crop(Image.open(masks / p.name))).max(2) > 127)
                         for p in paths])
    hits = loc.pointing_game(a, crops, tolerance=2)
    energy = loc.energy_pointing_game(a, crops)
    for i, p in enumerate(paths):
        assert rows[(p.name, "pointing-game")]["score"] == float(hits[i])
        assert rows[(p.name, "pointing-game")]["curve"] is None
        np.testing.assert_allclose(rows[(p.name, "energy-pointing-game")]["score"], float(energy[i]), rtol=1e-5)
    assert evaluate.write_plot(out, _table(out)) is not None  # deletion's panel only


def test_localisation_metrics_need_masks(tmp_path, tiny, capsys):
    pytest.importorskip("interp_ext.metrics.localisation")
    images = _images(tmp_path / "in", 1)
    assert cli.main(["evaluate", str(images), "--model", tiny, "--metrics", "pointing-game",
                     "--out", str(tmp_path / "out")]) == 2
    assert "--metrics pointing-game: need a mask per image, --masks DIR" in capsys.readouterr().err


def test_two_ranks_equal_one_process(tmp_path, tiny):
    import torch.distributed as dist

    images = _images(tmp_path / "in", 3)
    single, multi = tmp_path / "single", tmp_path / "multi"
    # a class of its own: the tiny random model's 1000 logits nearly tie, and a batch of 2 rounds
    # apart from one of 3 (top-1 once came out 763 in one and 941 in the other). The ranks are
    # threads of this process here (torchrun's are processes), and torch.fx traces by patching
    # torch.nn.Module globally: no rank traces (tune folds with fx, the chains plan with it)
    quiet = ["--target", "7", "--no-tune", "--metric-option", "selectivity.incremental=false"]
    assert _evaluate(images, single, ["saliency"], ["deletion", "selectivity"], *quiet) == 0
    store, codes, errors = dist.HashStore(), [None, None], []
    parser = cli._parser()

    def rank(r):
        try:
            args = parser.parse_args(["evaluate", str(images), "--model", tiny, "--methods", "saliency",
                                      "--metrics", "deletion,selectivity", *_options(["deletion", "selectivity"]),
                                      "--out", str(multi), "--quiet", "--workers", "1", *quiet])
            config = evaluate.EvaluateConfig(cli._job_config(args, ["saliency"], r, 2, r),
                                             ["deletion", "selectivity"],
                                             evaluate.parse_metric_options(args.metric_option, ["deletion", "selectivity"]))
            state = {}
            try:
                with cli.Ranks(r, 2, store=store, command="evaluate") as ranks:
                    codes[r] = cli._evaluate_phases(config, args, ranks, state)
            finally:
                cli._release(state)
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and codes == [0, 0], (errors, codes)
    a, b = _table(single), _table(multi)
    assert b["timing"]["ranks"] == 2 and len(b["rows"]) == len(a["rows"]) == 6
    for ra, rb in zip(a["rows"], b["rows"]):
        assert (ra["image"], ra["method"], ra["metric"]) == (rb["image"], rb["method"], rb["metric"])
        np.testing.assert_allclose(ra["score"], rb["score"], rtol=1e-6, err_msg=str((ra["image"], ra["metric"])))


def test_bundled_model_on_two_photos(tmp_path):
    """The bundled model on real photos, Grad-CAM, deletion and insertion at 3 points each
    (the start, half and all the pixels): the ends of the curves are the model's own
    probabilities, the areas the trapezoid on [0, 1], and the maps mean something."""
    from sklearn.datasets import load_sample_image

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("china.jpg", "flower.jpg"):
        Image.fromarray(load_sample_image(name)).save(folder / name)
    out = tmp_path / "out"
    assert cli.main(["evaluate", str(folder), "--methods", "gradcam", "--metrics", "deletion,insertion",
                     "--metric-option", "deletion.pixels_per_step=25088", "--metric-option",
                     "insertion.pixels_per_step=25088", "--out", str(out), "--quiet"]) == 0
    table = _table(out)
    assert table["model"] == models.BUNDLED and table["config"]["metrics"]["insertion"]["canvas"] == "blur"
    rows = {(Path(r["image"]).name, r["metric"]): r for r in table["rows"]}
    assert len(rows) == 4 and all(len(r["curve"]) == 3 for r in rows.values())
    loaded = models.load_model(models.BUNDLED, None)
    paths = sorted(folder.iterdir())
    x = torch.stack([inputs.load_crop(inputs.InputImage(p, p.name), loaded)[1] for p in paths])
    with torch.inference_mode():
        probs = loaded.model(torch.cat([x, torch.zeros_like(x[:1])])).double().softmax(1)
    for i, p in enumerate(paths):
        d, ins = rows[(p.name, "deletion")], rows[(p.name, "insertion")]
        t = d["target"]
        assert t == int(probs[i].argmax()) and ins["target"] == t  # top-1
        # deletion starts at the image and ends on the zero canvas; insertion ends at the image
        np.testing.assert_allclose([d["curve"][0], d["curve"][2], ins["curve"][2]],
                                   [probs[i, t], probs[2, t], probs[i, t]], rtol=1e-3, atol=1e-5)
        for r in (d, ins):
            c = r["curve"]
            np.testing.assert_allclose(r["score"], (c[0] + 2 * c[1] + c[2]) / 4, rtol=1e-12)
        # what Grad-CAM points at matters: the top half alone beats the image without it
        assert ins["curve"][1] > d["curve"][1]


def test_matplotlib_is_imported_only_for_the_plot():
    code = ("import sys, interp_ext, interp_ext.evaluate, interp_ext.cli; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_help_lists_the_metrics_and_their_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside a default
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["evaluate"]
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for markup in ("``", ":func:", ":class:", ":mod:", ":meth:"):
        assert markup not in text
    for action in sub._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default}" in text, action.option_strings
        assert "(default" not in (action.help or "")
    for name, metric in evaluate.METRICS.items():
        assert f"  {name} " in text and metric.help in text
    for line in ("features_in_step=3136", "regions_evaluation=50", "canvas=blur", "pixels_per_step=none"):
        assert f"      {line} " in text


class _Identity:
    @staticmethod
    def crop(image):
        return image


@pytest.mark.parametrize("kind", ["01", "0255", "palette", "rgba", "jpeg"])
def test_masks_are_read_in_their_common_encodings(tmp_path, kind):
    on = np.zeros((12, 10), bool)
    on[2:7, 3:9] = True
    path = tmp_path / ("mask.jpg" if kind == "jpeg" else "mask.png")
    if kind == "01":
        Image.fromarray(on.astype(np.uint8)).save(path)
    elif kind in ("0255", "jpeg"):
        Image.fromarray(on.astype(np.uint8) * 255).save(path, **({"quality": 90} if kind == "jpeg" else {}))
    elif kind == "palette":  # VOC: class index on the object, 255 on the void border around it
        index = np.where(on, 7, 0).astype(np.uint8)
        index[1, 2:10] = 255
        im = Image.fromarray(index, mode="P")
        im.putpalette([0, 0, 0] * 7 + [200, 0, 0] + [0, 0, 0] * 247 + [224, 224, 192])
        im.save(path)
    else:
        rgba = np.zeros((12, 10, 4), np.uint8)
        rgba[..., 3] = 255
        rgba[on, 1] = 180
        Image.fromarray(rgba, mode="RGBA").save(path)
    got = evaluate.read_mask(path, (10, 12), _Identity()).numpy()
    np.testing.assert_array_equal(got, on)


def test_the_gallery_shows_only_scores_of_the_last_metric_options(tmp_path, tiny):
    images = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert cli.main(["explain", str(images), "--model", tiny, "--methods", "gradcam", "--out", str(out), "--quiet"]) == 0
    assert _evaluate(images, out, ["gradcam"], ["deletion"]) == 0
    assert "<small>(2)</small>" in (out / "index.html").read_text()
    # one image scored again with another step: the other's score (the old step) is not shown
    (images / "im1.png").rename(tmp_path / "im1.png")
    assert cli.main(["evaluate", str(images), "--model", tiny, "--methods", "gradcam", "--metrics",
                     "deletion", "--metric-option", "deletion.pixels_per_step=640", "--out", str(out), "--quiet"]) == 0
    page = (out / "index.html").read_text()
    assert "<small>(1)</small>" in page and "<small>(2)</small>" not in page


def test_seeded_scores_do_not_depend_on_the_batch(tiny):
    loaded = models.load_model(tiny, None)
    x = torch.rand(3, 3, 32, 40)
    maps = torch.rand(3, 1, 32, 40)
    target = torch.tensor([0, 1, 2])
    options = {**evaluate.metric_options(["region-perturbation"])["region-perturbation"],
               "order": "random", "perturb_baseline": "uniform", "patch_size": 8}
    keys = ["a/im0.png", "a/im1.png", "a/im2.png"]
    whole, _ = evaluate.score_maps("region-perturbation", loaded.model, x, maps, target, options, tune=False, keys=keys)
    alone, _ = evaluate.score_maps("region-perturbation", loaded.model, x[2:], maps[2:], target[2:], options,
                                   tune=False, keys=keys[2:])
    np.testing.assert_allclose(alone, whole[2:], rtol=1e-5)  # float32 batches round alike to 1e-7
    other, _ = evaluate.score_maps("region-perturbation", loaded.model, x[2:], maps[2:], target[2:], options,
                                   tune=False, keys=["a/im9.png"])
    assert abs(float(other[0]) - float(whole[2])) > 1e-4 * abs(float(whole[2]))  # another image, other draws
