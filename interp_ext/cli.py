"""The ``interp-ext`` command::

    interp-ext explain INPUTS... [--methods gradcam,saliency,...] [--model NAME] --out DIR
    interp-ext evaluate INPUTS... [--methods ...] [--metrics deletion,insertion,...] \\
        [--metric-option pixel-flipping.features_in_step=1568] [--masks DIR] --out DIR
    interp-ext visualize class|channel|dream|invert|fool ... --out DIR
    interp-ext bench [--quick]
    interp-ext info

``explain`` also runs under ``torchrun --nproc_per_node=K -m interp_ext.cli explain ...``:
the images are sharded across ranks, each on its own device (GPU ``LOCAL_RANK`` when
there are GPUs); the ranks share their results through torchrun's store, and rank 0
merges ``summary.json`` and the gallery.

``evaluate`` is the explain job with another end (:mod:`interp_ext.evaluate`): the same
inputs, model, methods, targets, lock and sharding (also under torchrun), and instead of
the maps it writes each image's scores by the metrics of :mod:`interp_ext.metrics`
(``scores.csv``, ``scores.json``, ``curves.png``); an explain gallery in the same
``--out`` shows them beside its pictures.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import evaluate as evaluation
from . import explain as job
from . import inputs, models, registry, writers
from .ranks import Ranks
from .ranks import from_environment as ranks_env

_EVALUATE_TEXT = """\
Score attribution maps: per image, method and metric the score (a curve metric's
area under its curve) and the curve, in DIR/scores.csv (one row per image, method
and metric) and DIR/scores.json (the rows with the curves, the summary: mean and
std per method and metric, the configuration), a plot DIR/curves.png (per curve
metric a panel, per method the mean curve and a band of one std over the images),
and the page: DIR/index.html, the gallery of an explain run into the same DIR with
each picture's scores added, else a page of its own. The summary is printed at
the end.

The maps are those of explain (the same --methods and options, one planner call
per batch), handed to the metrics as (N, 1, H, W) maps at the model's input size
(input-shaped maps summed over their channels), with the normalised images and
their target classes.

Resumable: per image a record DIR/records/scores/<hash>.json; an image's method
and metric pair is not scored again when the record shows the same model weights,
input size, target, input file, method options and layer and metric options
(--force scores it again). One run at a time per --out (DIR/.lock, shared with
explain). Under torchrun the images are sharded across ranks and rank 0 writes
the table, the plot and the page.
"""

_EXPLAIN_TEXT = """\
Explain many images: per image and method an overlay PNG and the raw map (.npy,
float32) in DIR/images/<folders>/<image name without its suffix>/, a record
DIR/records/<hash>.json, then DIR/summary.json, DIR/index.html (an offline
gallery, in pages of 100 images; click a picture to enlarge it) and DIR/gallery.png.

Images are read ahead of the model and written behind it in --workers threads each;
memory stays flat on any number of images.

Resumable: an image whose record shows the same model weights, input size, target,
input file and per method the same options and layer is not redone (--force redoes
it). A killed run keeps every image it finished; run the same command again.

One run at a time per --out (a lock, DIR/.lock). Under torchrun the images are
sharded across ranks and rank 0 writes the summary and the gallery.
"""


class _DefaultsShown(argparse.HelpFormatter):
    """Plain help text with "(default: ...)" after each option that has a value by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "(default" not in text
                and action.default is not None and action.default is not False and action.default != argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class _ExplainHelp(argparse.RawDescriptionHelpFormatter, _DefaultsShown):
    """explain's help: its description and the methods list kept as written, the defaults shown."""


def _option_text(value: object) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _job_arguments(p: argparse.ArgumentParser, d: "job.ExplainConfig", evaluate: bool = False) -> None:
    """The options explain and evaluate share (evaluate: its wording of --force, --quiet and
    the memory bound)."""
    st = d.settings
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive) or .txt files listing paths")
    p.add_argument("--methods", default=",".join(registry.DEFAULT_METHODS), metavar="M1,M2,...",
                   help="comma list of explain's methods" if evaluate else "comma list of the methods listed below")
    p.add_argument("--model", default=models.BUNDLED,
                   help=f"{models.BUNDLED} (bundled), a torchvision architecture with --weights, or module:function")
    p.add_argument("--weights", help="state-dict file for a torchvision architecture")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                   help="images per model call")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--target", default=d.target, help="top1, a class index, or a CSV of image,label rows")
    p.add_argument("--layer", help="Grad-CAM layer (dotted module name); default: the model's last spatial layer")
    p.add_argument("--occlusion-window", type=int, default=st.occlusion_window, metavar="PX",
                   help="occlusion: side of the square window, in pixels")
    p.add_argument("--occlusion-stride", type=int, default=st.occlusion_stride, metavar="PX",
                   help="occlusion: step between windows, at most the window")
    p.add_argument("--smoothgrad-samples", type=int, default=st.smoothgrad_samples, metavar="N",
                   help="smoothgrad: noisy copies per image")
    p.add_argument("--ig-steps", type=int, default=st.ig_steps, metavar="N",
                   help="integrated-gradients: points on the path from the baseline")
    p.add_argument("--shapley-patch", type=int, default=st.shapley_patch, metavar="PX",
                   help="shapley: side of the square patches the image is split into")
    p.add_argument("--shapley-samples", type=int, default=st.shapley_samples, metavar="N",
                   help="shapley: random permutations of the patches")
    bound = ("the memory bound of occlusion, shapley and smoothgrad: perturbed copies in one model "
             "call over the whole batch; each image gets max(1, N // batch size) copies per call, "
             "smoothgrad's noisy copies (which also run a backward) go N // 4 per call; it changes no map")
    if evaluate:
        bound += "; also the metrics' perturbed copies per model call (it changes no score)"
    p.add_argument("--perturbations-per-eval", type=int, default=st.perturbations_per_eval, metavar="N", help=bound)
    p.add_argument("--workers", type=int, default=job.default_workers(), metavar="N",
                   help="threads that read images ahead of the model" + ("" if evaluate else
                   ", and as many that write behind it") + "; the default is the number of usable cores, at most 4")
    p.add_argument("--force", action="store_true",
                   help="score every image again, also the pairs its record shows were scored with this configuration"
                   if evaluate else
                   "redo every image, also those whose record shows they were made with this configuration")
    p.add_argument("--no-tune", action="store_true",
                   help="run each pass on the whole batch in NCHW, exactly as given; by default each pass runs at "
                   "the fastest batch size within --batch-size (and --perturbations-per-eval) and the faster "
                   "memory format, measured on the first batches (maps equal to float rounding)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or report" if not evaluate else
                   "no progress bar, report or summary table")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp-ext", description="Fast CNN interpretability on batches of images.")
    parser.add_argument("--version", action="version", version=f"interp-ext {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = job.ExplainConfig(inputs=(), out=Path("."))  # the defaults, shown as they resolve here
    width = max(len(k) for k in registry.METHODS) + 2
    methods_text = "methods (--methods):\n" + "\n".join(f"  {k:<{width}}{m.help}" for k, m in registry.METHODS.items())
    ex = sub.add_parser(
        "explain",
        help="attribution maps for many images: overlays, raw .npy maps, summary.json, index.html",
        description=_EXPLAIN_TEXT,
        epilog=methods_text,
        formatter_class=_ExplainHelp,
    )
    _job_arguments(ex, d)
    ex.set_defaults(func=_explain)

    mwidth = max(len(k) for k in evaluation.METRICS) + 2
    metrics_text = "metrics (--metrics) and their options (--metric-option NAME.KEY=VALUE, the defaults shown):\n"
    explained: set = set()  # each option's note once, where it first appears
    for k, m in evaluation.METRICS.items():
        metrics_text += f"  {k:<{mwidth}}{m.help}; {m.better} is better\n"
        for o, v in m.options.items():
            note = f"  {v.help}" if v.help and (o, v.help) not in explained else ""
            explained.add((o, v.help))
            metrics_text += f"      {f'{o}={_option_text(v.default)}':<26}{note}".rstrip() + "\n"
    ev = sub.add_parser(
        "evaluate",
        help="score the methods' maps with faithfulness (and localisation) metrics: scores.csv, scores.json, "
             "curves.png, index.html",
        description=_EVALUATE_TEXT,
        epilog=metrics_text + "\nmethods (--methods): those of explain (interp-ext explain --help)",
        formatter_class=_ExplainHelp,
    )
    _job_arguments(ev, d, evaluate=True)
    ev.add_argument("--metrics", default=",".join(evaluation.DEFAULT_METRICS), metavar="K1,K2,...",
                    help="comma list of the metrics listed below")
    ev.add_argument("--metric-option", action="append", metavar="NAME.KEY=VALUE",
                    help="change a metric's option, e.g. pixel-flipping.features_in_step=1568 (repeat for more)")
    ev.add_argument("--masks", type=Path, metavar="DIR",
                    help="ground-truth masks for the localisation metrics: an image per input with the same "
                    "name (stem), white on the object, of the input's size")
    ev.set_defaults(func=_evaluate, command_parser=ev)

    vis = sub.add_parser("visualize", help="feature visualisation: class, channel, dream, invert, fool -> PNGs")
    kinds = vis.add_subparsers(dest="kind", required=True)
    shown = _DefaultsShown

    def common(p: argparse.ArgumentParser, image: bool, steps: int) -> None:
        if image:
            p.add_argument("images", nargs="+", type=Path, help="input image files")
        p.add_argument("--model", default=models.BUNDLED, help="as for explain")
        p.add_argument("--weights", help="state-dict file for a torchvision architecture")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--out", required=True, type=Path, help="output folder")
        p.add_argument("--steps", type=int, default=steps, help="optimisation steps")
        p.add_argument("--seed", type=int, default=0, help="random seed of the starting image and the jitter")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=_visualize)

    k = kinds.add_parser("class", help="images that maximise class scores (regularised gradient ascent)",
                         formatter_class=shown)
    k.add_argument("--target", required=True, help="comma list of class indices")
    k.add_argument("--size", type=int, default=224, help="side of the image, in pixels")
    k.add_argument("--lr", type=float, default=0.1, help="step size of the gradient ascent")
    common(k, image=False, steps=200)
    k = kinds.add_parser("channel", help="images that maximise a layer's channels (or their centre neuron)",
                         formatter_class=shown)
    k.add_argument("--layer", required=True, help="dotted module name")
    k.add_argument("--channel", required=True, help="comma list of channels")
    k.add_argument("--neuron", action="store_true", help="the centre neuron instead of the channel mean")
    k.add_argument("--size", type=int, default=224, help="side of the image, in pixels")
    k.add_argument("--lr", type=float, default=0.1, help="step size of the gradient ascent")
    common(k, image=False, steps=200)
    k = kinds.add_parser("dream", help="DeepDream: amplify what a layer sees in each image", formatter_class=shown)
    k.add_argument("--layer", required=True, help="dotted module name")
    k.add_argument("--octaves", type=int, default=3, help="scales, each 1.4x the last")
    common(k, image=True, steps=20)
    k = kinds.add_parser("invert", help="reconstruct each image from a layer's features (TV-regularised)",
                         formatter_class=shown)
    k.add_argument("--layer", required=True, help="dotted module name")
    k.add_argument("--tv-weight", type=float, default=1e-3, help="weight of the total-variation regulariser")
    common(k, image=True, steps=200)
    k = kinds.add_parser("fool", help="the smallest sign steps that make the model predict --target-class",
                         formatter_class=shown)
    k.add_argument("--target-class", type=int, required=True, help="the class the model should predict")
    common(k, image=True, steps=100)

    bench = sub.add_parser("bench", help="run the benchmark suite; write tables, a speed-up chart and BENCHMARKS.md")
    bench.add_argument("--quick", action="store_true", help="small shapes and short runs")
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    bench.add_argument("--from-results", action="store_true", help="do not run: chart and report the recorded results")
    bench.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    bench.add_argument("--benchmarks-md", type=Path,
                       help="also rewrite this file's section for the device (e.g. BENCHMARKS.md; default: only the "
                            "report and chart in --out)")
    bench.set_defaults(func=_bench)

    info = sub.add_parser("info", help="how interp_ext was built and what device it sees")
    info.set_defaults(func=_info)
    return parser


def _job_config(args: argparse.Namespace, methods: list[str], rank: int, world: int,
                local_rank: int) -> "job.ExplainConfig":
    """explain's configuration from the options explain and evaluate share; under torchrun
    each rank on its own GPU (``LOCAL_RANK``) when there are GPUs."""
    settings = registry.Settings(occlusion_window=args.occlusion_window, occlusion_stride=args.occlusion_stride,
                                 smoothgrad_samples=args.smoothgrad_samples, ig_steps=args.ig_steps,
                                 shapley_patch=args.shapley_patch,
                                 shapley_samples=args.shapley_samples,
                                 perturbations_per_eval=args.perturbations_per_eval)
    device = args.device
    if world > 1 and (device.startswith("cuda") or device == "auto"):
        import torch

        if torch.cuda.is_available():  # one device per rank
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
    return job.ExplainConfig(inputs=args.inputs, out=args.out, methods=methods, model=args.model, weights=args.weights,
                             batch_size=args.batch_size, device=device, target=args.target, layer=args.layer,
                             quiet=args.quiet or rank > 0, force=args.force, settings=settings,
                             workers=args.workers, tune=not args.no_tune)


def _release(state: dict) -> None:
    for held in (state.get("prep"), state.get("checked")):
        if held is not None and held.lock is not None:
            held.lock.release()


def _explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        methods = registry.parse_methods(args.methods)
    except ValueError as e:
        parser.error(str(e))
    rank, world, local_rank = ranks_env()
    config = _job_config(args, methods, rank, world, local_rank)
    state: dict = {}
    try:
        with Ranks(rank, world) as ranks:
            return _explain_phases(config, args, ranks, state)
    finally:
        _release(state)


def _explain_phases(config: "job.ExplainConfig", args: argparse.Namespace, ranks: Ranks, state: dict) -> int:
    owner = ranks.rank == 0
    # 1. checks that need no model, the inputs, the lock of an existing --out
    def check():
        state["checked"] = job.check(config, owner=owner)
        return len(state["checked"].images)

    results = ranks.agree(ranks.phase(check))
    if ranks.failed(results, 2):
        return 2
    checked = state["checked"]
    if owner:
        for s in checked.skipped:
            print(f"interp-ext: skipped {s['source']}: {s['reason']}", file=sys.stderr)
    if not results[0][2]:  # rank 0's inputs decide, on every rank
        if owner:
            print("interp-ext explain: no image could be processed", file=sys.stderr)
        return 1
    # 2. the model and the methods
    def load():
        state["prep"] = job.load(checked)

    if ranks.failed(ranks.agree(ranks.phase(load)), 2):
        return 2
    prep = state["prep"]
    # 3. only when every rank is ready: the owner creates --out, holds its lock, sweeps old temporaries
    # and works out every image's folder from its records; every rank adopts the owner's folders
    results = ranks.agree(ranks.phase(lambda: job.claim(prep) if owner else None))
    if ranks.failed(results, 2):
        return 2
    prep.folders = dict(results[0][2])
    # 4. every rank its shard; each image's record is durable as soon as it is written
    results = ranks.agree(ranks.phase(lambda: job.run(prep, prep.images[ranks.rank::ranks.world])))
    if ranks.failed(results, 1, "; the images finished before are kept: run the same command again to resume"):
        return 1
    parts = [part for _, _, part in results]

    # 5. rank 0: summary.json, index.html, gallery.png (from the records)
    def finish():
        if not owner:
            return None
        summary = job.summarize(prep, parts)
        writers.write_summary(config.out, summary)
        # with the scores of an evaluate run into the same --out (of the same maps), if any
        gallery = writers.write_gallery(config.out, summary, scores=evaluation.gallery_scores(config.out, summary))
        writers.write_contact_sheet(config.out, summary)
        state["summary"] = summary, gallery

    if ranks.failed(ranks.agree(ranks.phase(finish)), 1):
        return 1
    if owner and not args.quiet:
        summary, gallery = state["summary"]
        t = summary["timing"]
        rate = f", {t['images_per_second']} img/s" if t["images_per_second"] else ""
        print(f"explained {t['processed_this_run']} images ({len(summary['images'])} in {inputs.display_name(config.out)}"
              f"{rate}); {len(summary['skipped'])} skipped; gallery: {inputs.display_name(gallery.resolve())}")
    finished = sum(len(part["images"]) for part in parts)
    if not finished:
        if owner:
            print("interp-ext explain: no image could be processed", file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        methods = evaluation.parse_methods(args.methods)
        metrics = evaluation.parse_metrics(args.metrics)
        overrides = evaluation.parse_metric_options(args.metric_option or [], metrics)
    except ValueError as e:
        getattr(args, "command_parser", parser).error(str(e))  # evaluate's usage line, then the message
    rank, world, local_rank = ranks_env()
    config = evaluation.EvaluateConfig(_job_config(args, methods, rank, world, local_rank), metrics, overrides,
                                       args.masks)
    state: dict = {}
    try:
        with Ranks(rank, world, command="evaluate") as ranks:
            return _evaluate_phases(config, args, ranks, state)
    finally:
        _release(state)


def _evaluate_phases(config: "evaluation.EvaluateConfig", args: argparse.Namespace, ranks: Ranks, state: dict) -> int:
    """explain's phases (checks, model, lock, shards, the owner's files), scoring instead of writing maps."""
    owner = ranks.rank == 0
    out = config.explain.out

    def check():
        state["checked"] = evaluation.check(config, owner=owner)
        return len(state["checked"].job.images)

    results = ranks.agree(ranks.phase(check))
    if ranks.failed(results, 2):
        return 2
    checked = state["checked"]
    if owner:
        for s in checked.job.skipped:
            print(f"interp-ext: skipped {s['source']}: {s['reason']}", file=sys.stderr)
        if not args.quiet and not evaluation.plot_available():
            print("interp-ext evaluate: matplotlib is not installed: no curves.png "
                  "(pip install 'interp_ext[evaluate]')", file=sys.stderr)
    if not results[0][2]:
        if owner:
            print("interp-ext evaluate: no image could be processed", file=sys.stderr)
        return 1

    def load():
        state["prep"] = evaluation.load(checked)

    if ranks.failed(ranks.agree(ranks.phase(load)), 2):
        return 2
    prep = state["prep"]
    if ranks.failed(ranks.agree(ranks.phase(lambda: evaluation.claim(prep) if owner else None)), 2):
        return 2
    images = prep.job.images
    results = ranks.agree(ranks.phase(lambda: evaluation.run(prep, images[ranks.rank::ranks.world])))
    if ranks.failed(results, 1, "; the images scored before are kept: run the same command again to resume"):
        return 1
    parts = [part for _, _, part in results]

    def finish():
        if owner:
            state["table"] = evaluation.finish(prep, parts)

    if ranks.failed(ranks.agree(ranks.phase(finish)), 1):
        return 1
    if not sum(len(part["images"]) for part in parts):
        if owner:
            print("interp-ext evaluate: no image could be processed", file=sys.stderr)
        return 1
    if owner and not args.quiet:
        table = state["table"]
        t, files = table["timing"], table["files"]
        print(evaluation.format_summary(table))
        shown = [f"{name}: {inputs.display_name(Path(path).resolve())}" for name, path in
                 (("table", files["csv"]), ("plot", files["plot"]), ("page", files["page"])) if path is not None]
        print(f"scored {t['processed_this_run']} images this run ({t['images']} in {inputs.display_name(out)}, "
              f"{len(table['skipped'])} skipped); {'; '.join(shown)}")
    return 0


def _version() -> str:
    """The package's version, and the torch it runs on (read without loading the native library)."""
    from importlib import metadata

    try:
        version = metadata.version("interp_ext")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    import torch

    return f"{version} (torch {torch.__version__})"


def _ints(spec: str, name: str) -> list[int]:
    try:
        return [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be a comma list of integers, got {spec!r}") from None


def _visualize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """One PNG per result in --out, written atomically; a line per file on stdout."""
    import torch

    from . import viz, visualize

    try:
        if args.steps < 1:
            raise ValueError(f"--steps must be a positive integer, got {args.steps}")
        loaded = models.load_model(args.model, args.weights)
        device = models.pick_device(args.device)
        loaded.model.to(device)
        quiet = args.quiet
        written = []

        def save(images01: "torch.Tensor", names: list[str]) -> None:
            for img, name in zip(images01, names):
                pic = viz.to_pil(img)
                written.append(viz.save_png(pic, args.out / f"{name}.png"))

        def load(paths: list[Path]) -> "torch.Tensor":
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise ValueError(f"images: no such file {', '.join(missing)}")
            crops = [loaded.crop(inputs.read_image(p, loaded.resize_size)) for p in paths]
            return torch.stack([models.to_unit_tensor(c) for c in crops]).to(device)

        if args.kind in ("class", "channel"):
            kw = dict(steps=args.steps, lr=args.lr, image_size=args.size, seed=args.seed, show_progress=not quiet)
            if args.kind == "class":
                targets = _ints(args.target, "--target")
                res = visualize.class_visualization(loaded, targets, **kw)
                save(res.images, [f"class_{t}_{loaded.categories[t].replace(' ', '_')}" if t < len(loaded.categories) else f"class_{t}"
                                  for t in targets])
            else:
                channels = _ints(args.channel, "--channel")
                res = visualize.class_visualization(loaded, layer=args.layer, channel=channels,
                                                    neuron="center" if args.neuron else None, **kw)
                save(res.images, [f"channel_{args.layer}_{c}" for c in channels])
        else:
            x = load(args.images)
            stems = [p.stem for p in args.images]
            if args.kind == "dream":
                res = visualize.deep_dream(loaded, x, args.layer, steps=args.steps, octaves=args.octaves,
                                           seed=args.seed, show_progress=not quiet)
                save(res.images, [f"dream_{s}" for s in stems])
            elif args.kind == "invert":
                res = visualize.invert_features(loaded, x, args.layer, steps=args.steps, tv_weight=args.tv_weight,
                                                seed=args.seed, show_progress=not quiet)
                save(res.images, [f"invert_{s}" for s in stems])
            else:
                res = visualize.fooling_image(loaded, x, args.target_class, max_steps=args.steps,
                                              show_progress=not quiet)
                save(res.images, [f"fool_{s}" for s in stems])
                for s, ok, st, linf in zip(stems, res.fooled.tolist(), res.steps.tolist(), res.linf.tolist()):
                    print(f"{s}: {'fooled' if ok else 'not fooled'} after {st} steps, L-inf {linf * 255:.2f}/255")
    except (ValueError, TypeError, ImportError, OSError) as e:  # OSError: a file that cannot be read or written
        print(f"interp-ext visualize: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        for path in written:
            print(path)
    return 0


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The suite lives in the source checkout's benchmarks/ (it needs the peer libraries)."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"
    if not script.is_file():
        print("interp-ext bench: error: benchmarks/run_all.py ships with the source checkout "
              "(git clone, then pip install -e .); it is not part of an installed wheel", file=sys.stderr)
        return 2
    cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else []) + (["--from-results"] if args.from_results else [])
    for flag, value in (("--device", args.device), ("--out", args.out), ("--benchmarks-md", args.benchmarks_md)):
        if value is not None:
            cmd += [flag, str(value)]
    return subprocess.run(cmd).returncode


def _info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    import interp_ext

    info = dict(interp_ext.build_info())
    info["torch_runtime"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    info["threads"] = torch.get_num_threads()
    print(json.dumps(info, indent=2))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``interp-ext`` command: parse `argv` (default: ``sys.argv[1:]``), run the
    subcommand and return its exit status (0 done, 1 nothing could be processed or a
    run failed, 2 a bad argument)."""
    parser = _parser()
    args = parser.parse_args(argv)
    return args.func(args, parser)


if __name__ == "__main__":
    raise SystemExit(main())
