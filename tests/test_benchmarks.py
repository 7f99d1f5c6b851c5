"""benchmarks/run_all.py: speed-up extraction, the chart, the BENCHMARKS.md section."""
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
run_all = pytest.importorskip("run_all")


def _results():
    return {name: json.loads((BENCH / "results" / f"{name}_cpu.json").read_text()) for name in run_all.SUITE}


def test_speedups_from_the_recorded_results():
    bars = run_all.speedups(_results())
    groups = {b["group"] for b in bars}
    assert {"guided ReLU backward", "GuidedBackprop e2e", "Grad-CAM reduction", "Grad-CAM e2e", "Occlusion",
            "Gaussian blur", "TV fwd+bwd", "regularise step", "class-vis loop"} <= groups
    assert {b["against"] for b in bars} == {"eager reference", "Captum", "pytorch-grad-cam", "torchvision",
                                            "kornia (separable)"}
    assert all(b["speedup"] > 0 for b in bars)
    occ = next(b for b in bars if b["group"] == "Occlusion" and b["case"].startswith("free"))
    assert occ["speedup"] == _results()["occlusion"]["occlusion"][0]["speedup"]


def test_chart_is_a_png_with_a_bar_per_speedup(tmp_path):
    bars = run_all.speedups(_results())
    png = run_all.chart(bars, "test", tmp_path / "chart.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.height > 20 * len(bars)


def test_stand_in_model_bars_are_apart_with_a_legend():
    bars = run_all.speedups(_results())
    stand_in = [b for b in bars if b["stand_in"]]
    assert [b["case"] for b in stand_in] == ["free x8"]  # the near-free model; resnet18 is a real model
    fig = run_all.figure(bars, "test")
    try:
        real_ax, stand_in_ax = fig.axes[:2]
        labels = lambda ax: [t.get_text() for t in ax.get_yticklabels()]
        assert len(labels(real_ax)) == len(bars) - 1 and not any("free" in t for t in labels(real_ax))
        assert labels(stand_in_ax) == ["Occlusion: free x8 (1 thr) vs Captum"]
        assert "stand-in" in stand_in_ax.get_title(loc="left")
        assert all(p.get_hatch() == "//" for p in stand_in_ax.patches)
        legend = real_ax.get_legend()
        entries = {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles)}
        assert set(entries) == ({f"vs {b['against']}" for b in bars if not b["stand_in"]}
                                | {f"vs {b['against']}, stand-in model" for b in stand_in})
        # each legend entry looks like its bars: the stand-in entry as orange (Captum) and hatched as its bar
        from matplotlib.colors import to_hex

        for ax, suffix in ((real_ax, ""), (stand_in_ax, ", stand-in model")):
            for bar, patch in zip([b for b in bars if b["stand_in"] == (ax is stand_in_ax)], ax.patches):
                entry = entries[f"vs {bar['against']}{suffix}"]
                assert to_hex(entry.get_facecolor()) == to_hex(patch.get_facecolor()) == run_all.COLOURS[bar["against"]]
                assert entry.get_hatch() == patch.get_hatch()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_section_is_replaced_and_the_rest_kept(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nhand-written GPU figures\n")
    run_all.replace_section(md, "CPU", "first\n")
    run_all.replace_section(md, "NVIDIA H200", "gpu\n")
    run_all.replace_section(md, "CPU", "second\n")
    text = md.read_text()
    assert "hand-written GPU figures" in text and "second" in text and "first" not in text and "gpu" in text
    assert text.count("<!-- interp-ext bench: CPU -->") == 1


def test_the_suite_leaves_benchmarks_md_alone_unless_asked(tmp_path, monkeypatch):
    rewritten = []
    real = run_all.replace_section
    monkeypatch.setattr(run_all, "replace_section", lambda path, *a: rewritten.append(path) or real(path, *a))
    md = BENCH.parent / "BENCHMARKS.md"
    before = md.read_text()
    assert run_all.main(["--from-results", "--device", "cpu", "--out", str(BENCH / "results")]) == 0
    assert rewritten == [] and md.read_text() == before
    target = tmp_path / "B.md"
    target.write_text("# mine\n")
    assert run_all.main(["--from-results", "--device", "cpu", "--benchmarks-md", str(target)]) == 0
    assert rewritten == [target] and "interp-ext bench" in target.read_text() and target.read_text().startswith("# mine")
