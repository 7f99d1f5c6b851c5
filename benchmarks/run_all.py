"""Run the benchmark suite and write a report: markdown tables, a bar chart of the
speed-ups (vs the pure-PyTorch reference and vs the peer libraries), in --out
(benchmarks/results/); with --benchmarks-md BENCHMARKS.md also that file's section for the
device, which a re-run replaces (the rest of the file is left alone). Machine, device,
threads and versions are recorded with every figure.

    python benchmarks/run_all.py [--quick] [--device cpu|cuda] [--out DIR] [--benchmarks-md FILE]
    python benchmarks/run_all.py --from-results   # chart + report from the recorded JSON only
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

SUITE = ("guided_relu", "gradcam", "occlusion", "blur")
# whole-job benchmarks, run after the suite and charted with it
JOBS = ("explain", "metrics")
CPU_ONLY = ("occlusion", "explain")  # they measure CPU processes (max RSS); the GPU job check is separate


def recorded(device_name: str, out: Path) -> dict[str, dict]:
    """The latest recorded results of each benchmark for a device ("cpu", "NVIDIA H200"...)."""
    results = {}
    for name in SUITE + JOBS:
        path = out / f"{name}_{device_name.replace(' ', '_')}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    return results


def run_suite(device: str, quick: bool, out: Path) -> dict[str, dict]:
    """Run every benchmark script of the suite for `device` (each writes its JSON into
    `out`) and return the results they recorded."""
    results = {}
    for name in SUITE + JOBS:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), "--out", str(out)]
        if name not in CPU_ONLY:
            cmd += ["--device", device]
        elif device == "cuda":
            continue
        if quick:
            cmd.append("--quick")
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)
        found = sorted(out.glob(f"{name}_*.json"), key=lambda p: p.stat().st_mtime)
        results[name] = json.loads(found[-1].read_text())
    return results


# benchmark models that stand in for a CNN: they measure a method's own overhead, not the speed-up a real model sees
STAND_IN_MODELS = {"free": "near-free spatial mean"}


def speedups(results: dict[str, dict]) -> list[dict]:
    """One bar per (benchmark, case, baseline): how many times faster interp_ext is;
    ``stand_in``: measured with a stand-in model (:data:`STAND_IN_MODELS`), not a real one."""
    bars = []

    def add(group, case, against, value, threads, stand_in=False):
        if value:
            bars.append({"group": group, "case": case, "against": against, "speedup": float(value), "threads": threads,
                         "stand_in": stand_in})

    for r in results.get("guided_relu", {}).get("guided_backward", []):
        case = "x".join(map(str, r["shape"])) if isinstance(r["shape"], list) else str(r["shape"])
        add("guided ReLU backward", case, "eager reference", r.get("speedup_vs_eager"), r["threads"])
    for r in results.get("guided_relu", {}).get("end_to_end", []):
        add("GuidedBackprop e2e", f"{r['model']} b{r['batch']}", "Captum", r.get("speedup_vs_captum"), r["threads"])
    for r in results.get("gradcam", {}).get("reduction", []):
        case = "x".join(map(str, r["shape"])) if isinstance(r["shape"], list) else str(r["shape"])
        add("Grad-CAM reduction", case, "eager reference", r.get("speedup_vs_eager"), r["threads"])
        add("Grad-CAM reduction", case, "pytorch-grad-cam", r.get("speedup_vs_pytorch_grad_cam"), r["threads"])
    for r in results.get("gradcam", {}).get("end_to_end", []):
        add("Grad-CAM e2e", f"{r['model']} b{r['batch']}", "Captum", r.get("speedup_vs_captum"), r["threads"])
        add("Grad-CAM e2e", f"{r['model']} b{r['batch']}", "pytorch-grad-cam", r.get("speedup_vs_pytorch_grad_cam"), r["threads"])
    for r in results.get("blur", {}).get("blur", []):
        case = f"{r['shape']} k{r['kernel']}"
        for peer, label in (("torchvision", "torchvision"), ("kornia_separable", "kornia (separable)")):
            add("Gaussian blur", case, label, r.get(f"speedup_vs_{peer}"), r["threads"])
    for r in results.get("blur", {}).get("tv", []):
        add("TV fwd+bwd", r["shape"], "eager reference", r.get("speedup_vs_eager"), r["threads"])
    for r in results.get("blur", {}).get("regularize", []):
        add("regularise step", r["shape"], "eager reference", r.get("speedup_vs_eager"), r["threads"])
    for r in results.get("blur", {}).get("loop", []):
        add("class-vis loop", f"{r['steps']} steps b{r['batch']}", "eager reference", r.get("speedup_vs_eager"), r["threads"])
    for r in results.get("occlusion", {}).get("occlusion", []):
        add("Occlusion", f"{r['model']} x{r['images']}", "Captum", r.get("speedup"), r["threads"],
            stand_in=r["model"] in STAND_IN_MODELS)
    for r in results.get("explain", {}).get("timing", []):
        add("explain job", f"{r['set']} ({r['images']} images)", "peers' job", r.get("speedup_vs_peers"), r["threads"])
    for r in results.get("metrics", {}).get("rows", []):
        add("metric", f"{r['metric']} on {r['map']} ({r['images']} images)", r["peer"], r.get("speedup"), r["threads"])
    return bars


COLOURS = {"eager reference": "#4c72b0", "Captum": "#dd8452", "pytorch-grad-cam": "#55a868",
           "torchvision": "#c44e52", "kornia (separable)": "#937860", "peers' job": "#8172b3",
           "Quantus 0.6": "#da8bc3", "RISE-style loop": "#ccb974"}
OTHER_COLOUR = "#8c8c8c"


def figure(bars: list[dict], title: str):
    """The speed-up chart as a matplotlib figure: one horizontal bar per speed-up (log
    scale, 1 = parity), coloured by the baseline it is measured against (the legend).
    Bars measured with a stand-in model (``stand_in``) are kept apart, in a panel of
    their own below the real-model and kernel bars, hatched, so that an overhead-only
    figure is not read as what a real model gains; their legend entries are drawn as
    their bars are (the baseline's colour, hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    real = [b for b in bars if not b.get("stand_in")]
    stand_in = [b for b in bars if b.get("stand_in")]
    groups = [(real, "real models and kernels")] if real else []
    if stand_in:
        names = ", ".join(sorted(set(STAND_IN_MODELS.values())))
        groups.append((stand_in, f"stand-in model ({names}): the method's own overhead, not a real model's speed-up"))
    fig, axes = plt.subplots(len(groups), 1, sharex=True, squeeze=False, dpi=100, layout="constrained",
                             figsize=(10, 0.32 * len(bars) + 1.0 + 0.9 * len(groups)),
                             gridspec_kw={"height_ratios": [len(g) + 0.6 for g, _ in groups]})
    for ax, (group, heading) in zip(axes[:, 0], groups):
        hatch = "//" if group is stand_in else None
        ax.barh(range(len(group)), [b["speedup"] for b in group], hatch=hatch, edgecolor="white" if hatch else None,
                color=[COLOURS.get(b["against"], OTHER_COLOUR) for b in group])
        ax.set_yticks(range(len(group)), [f"{b['group']}: {b['case']} ({b['threads']} thr) vs {b['against']}"
                                          for b in group], fontsize=7)
        ax.set_ylim(len(group) - 0.4, -0.6)  # top to bottom, no empty rows
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(heading, fontsize=8, loc="left")
        for i, b in enumerate(group):
            ax.text(b["speedup"], i, f" {b['speedup']:.3g}x", va="center", fontsize=7)
    if bars:  # room for the value labels after the longest bar
        values = [b["speedup"] for b in bars]
        axes[0, 0].set_xlim(min(0.8, min(values) * 0.8), max(values) * 1.8)
    axes[-1, 0].set_xlabel("speed-up of interp_ext (x, log scale; 1 = parity)")
    against = list(dict.fromkeys(b["against"] for b in real))
    handles = [Patch(color=COLOURS.get(a, OTHER_COLOUR), label=f"vs {a}") for a in against]
    # the stand-in bars as drawn: their baseline's colour, hatched (one entry per baseline)
    for a in dict.fromkeys(b["against"] for b in stand_in):
        handles.append(Patch(facecolor=COLOURS.get(a, OTHER_COLOUR), edgecolor="white", hatch="//",
                             label=f"vs {a}, stand-in model"))
    axes[0, 0].legend(handles=handles, fontsize=7, loc="lower right", title="baseline", title_fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def chart(bars: list[dict], title: str, path: Path) -> Path:
    """Draw :func:`figure` into the PNG `path` (written under a temporary name, then renamed)."""
    import matplotlib.pyplot as plt

    fig = figure(bars, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def replace_section(md_path: Path, device: str, body: str) -> None:
    """Replace (or append) the section between this device's markers."""
    begin, end = f"<!-- interp-ext bench: {device} -->", f"<!-- /interp-ext bench: {device} -->"
    text = md_path.read_text() if md_path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = md_path.with_name(f".{md_path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(md_path)


def main(argv=None) -> int:
    """The command: run (or, with --from-results, read) the suite, write the chart and the
    report into --out, and the device's section of --benchmarks-md when given."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and short runs (minutes, not an hour)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--out", type=Path, default=common.RESULTS, help="results folder (JSON, markdown, chart)")
    p.add_argument("--from-results", action="store_true", help="do not run: chart and report the recorded JSON")
    p.add_argument("--benchmarks-md", type=Path, default=None,
                   help="also rewrite this markdown file's section for this device (e.g. BENCHMARKS.md); "
                        "default: only the report in --out")
    args = p.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    machine = common.machine(device)
    if args.from_results:
        results = recorded(machine["device"], args.out)
        if not results:
            raise SystemExit(f"no recorded results for {machine['device']} in {args.out}")
        dates = sorted({r.get("date") or r["machine"].get("date", "?") for r in results.values()})
        machine["date"] = dates[0][:10] if dates[0][:10] == dates[-1][:10] else f"{dates[0][:10]} to {dates[-1][:10]}"
    else:
        results = run_suite(device, args.quick, args.out)
    import interp_ext

    versions = {"interp_ext": interp_ext.__version__, "torch": torch.__version__}
    for peer in ("captum", "pytorch_grad_cam"):
        try:
            versions[peer] = __import__(peer).__version__
        except Exception:  # a peer that is absent or has no version: recorded as such
            versions[peer] = "absent"
    bars = speedups(results)
    label = machine["device"] if device == "cuda" else f"CPU ({machine['cpu']})"
    kind = "recorded" if args.from_results else ("quick" if args.quick else "full")
    png = chart(bars, f"interp_ext speed-ups, {label}, {kind} figures, {machine['date']}",
                args.out / f"speedups_{machine['device'].replace(' ', '_')}.png")
    header = (f"### `interp-ext bench`{' --quick' if args.quick else ''} on {label}\n\n"
              f"{machine['date']}; threads as listed per row; versions: "
              + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; chart: `{png.relative_to(HERE.parent) if png.is_relative_to(HERE.parent) else png}`\n\n")
    body = header + common.md_table(bars, ["group", "case", "threads", "against", "speedup"]) + "\n"
    report = args.out / f"report_{machine['device'].replace(' ', '_')}.md"
    report.write_text(body)
    written = [png, report]
    if args.benchmarks_md is not None and str(args.benchmarks_md) != "-":
        replace_section(args.benchmarks_md, label.split(" (")[0], body)
        written.append(args.benchmarks_md)
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
