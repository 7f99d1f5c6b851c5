"""The ``interp-ext`` command.

    interp-ext explain INPUTS... [--methods gradcam,saliency,...] [--model NAME] --out DIR
    interp-ext visualize class|channel|dream|invert|fool ... --out DIR
    interp-ext bench [--quick]
    interp-ext info

``explain`` also runs under ``torchrun --nproc_per_node=K -m interp_ext.cli explain ...``:
the images are sharded across ranks (nccl on GPUs, gloo on CPU), each rank on its own
device, and rank 0 merges ``summary.json`` and the gallery.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import explain as job


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp-ext", description="Fast CNN interpretability on batches of images.")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser(
        "explain",
        help="attribution maps for many images: overlays, raw .npy maps, summary.json, index.html",
        description=job.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("inputs", nargs="+", help="image files, folders (recursive) or .txt files listing paths")
    ex.add_argument("--methods", default=",".join(job.DEFAULT_METHODS),
                    help="comma list of: " + ", ".join(f"{k} ({m.help})" for k, m in job.METHODS.items()))
    ex.add_argument("--model", default=job.models.BUNDLED,
                    help="efficientnet_lite0 (bundled), a torchvision architecture with --weights, or module:function")
    ex.add_argument("--weights", help="state-dict file for a torchvision architecture")
    ex.add_argument("--out", required=True, type=Path, help="output folder")
    ex.add_argument("--batch-size", type=int, default=8)
    ex.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ex.add_argument("--target", default="top1", help="top1, a class index, or a CSV of image,label rows")
    ex.add_argument("--layer", help="Grad-CAM layer (dotted module name); default: the model's last spatial layer")
    ex.add_argument("--quiet", action="store_true", help="no progress bar or report")
    ex.set_defaults(func=_explain)

    vis = sub.add_parser("visualize", help="feature visualisation: class, channel, dream, invert, fool -> PNGs")
    kinds = vis.add_subparsers(dest="kind", required=True)

    def common(p: argparse.ArgumentParser, image: bool) -> None:
        if image:
            p.add_argument("images", nargs="+", type=Path, help="input image files")
        p.add_argument("--model", default=job.models.BUNDLED, help="as for explain")
        p.add_argument("--weights", help="state-dict file for a torchvision architecture")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--out", required=True, type=Path, help="output folder")
        p.add_argument("--steps", type=int, help="optimisation steps (default per kind)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--quiet", action="store_true")
        p.set_defaults(func=_visualize)

    k = kinds.add_parser("class", help="images that maximise class scores (regularised gradient ascent)")
    k.add_argument("--target", required=True, help="comma list of class indices")
    k.add_argument("--size", type=int, default=224)
    k.add_argument("--lr", type=float, default=0.1)
    common(k, image=False)
    k = kinds.add_parser("channel", help="images that maximise a layer's channels (or their centre neuron)")
    k.add_argument("--layer", required=True)
    k.add_argument("--channel", required=True, help="comma list of channels")
    k.add_argument("--neuron", action="store_true", help="the centre neuron instead of the channel mean")
    k.add_argument("--size", type=int, default=224)
    k.add_argument("--lr", type=float, default=0.1)
    common(k, image=False)
    k = kinds.add_parser("dream", help="DeepDream: amplify what a layer sees in each image")
    k.add_argument("--layer", required=True)
    k.add_argument("--octaves", type=int, default=3)
    common(k, image=True)
    k = kinds.add_parser("invert", help="reconstruct each image from a layer's features (TV-regularised)")
    k.add_argument("--layer", required=True)
    k.add_argument("--tv-weight", type=float, default=1e-3)
    common(k, image=True)
    k = kinds.add_parser("fool", help="the smallest sign steps that make the model predict --target-class")
    k.add_argument("--target-class", type=int, required=True)
    common(k, image=True)

    bench = sub.add_parser("bench", help="run the benchmark suite; write tables, a speed-up chart and BENCHMARKS.md")
    bench.add_argument("--quick", action="store_true", help="small shapes and short runs")
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    bench.add_argument("--from-results", action="store_true", help="do not run: chart and report the recorded results")
    bench.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    bench.add_argument("--benchmarks-md", type=Path, help="markdown file to update (default BENCHMARKS.md; '-' skips)")
    bench.set_defaults(func=_bench)

    info = sub.add_parser("info", help="how interp_ext was built and what device it sees")
    info.set_defaults(func=_info)
    return parser


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        methods = job.parse_methods(args.methods)
    except ValueError as e:
        parser.error(str(e))
    rank, world, local_rank = _distributed()
    device = args.device
    if world > 1:
        import torch
        import torch.distributed as dist

        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    config = job.ExplainConfig(inputs=args.inputs, out=args.out, methods=methods, model=args.model, weights=args.weights,
                               batch_size=args.batch_size, device=device, target=args.target, layer=args.layer,
                               quiet=args.quiet or rank > 0)
    failed = False
    try:
        try:
            prep = job.prepare(config)
        except (ValueError, TypeError, FileNotFoundError, ImportError, AttributeError) as e:
            print(f"interp-ext explain: error: {e}", file=sys.stderr)
            return 2
        if rank == 0:
            for s in prep.skipped:
                print(f"interp-ext: skipped {s['source']}: {s['reason']}", file=sys.stderr)
        part = job.run(prep, prep.images[rank::world])
        parts = [part]
        if world > 1:
            import torch.distributed as dist

            parts = [None] * world
            dist.all_gather_object(parts, part)
        if rank == 0:
            summary = job.summarize(prep, parts, job.read_previous(args.out))
            job.write_summary(args.out, summary)
            gallery = job.write_gallery(args.out, summary)
            job.write_contact_sheet(args.out, summary)
            if not args.quiet:
                t = summary["timing"]
                rate = f", {t['images_per_second']} img/s" if t["images_per_second"] else ""
                print(f"explained {t['processed_this_run']} images ({len(summary['images'])} in {args.out}{rate}); "
                      f"{len(summary['skipped'])} skipped; gallery: {gallery.resolve()}")
        else:
            summary = {"images": {key: {} for p in parts for key in p["images"]}}
        if not summary["images"]:
            print("interp-ext explain: no image could be processed", file=sys.stderr)
            return 1
        return 0
    except BaseException:
        failed = True
        raise
    finally:
        if world > 1:
            import torch.distributed as dist

            if not failed:  # a gloo rank that tears down while a peer still uses the group can abort
                dist.barrier()
            dist.destroy_process_group()


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
        loaded = job.load_model(args.model, args.weights)
        device = job.pick_device(args.device)
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
            crops = [loaded.crop(job.read_image(p, loaded.resize_size)) for p in paths]
            return torch.stack([job.models.to_unit_tensor(c) for c in crops]).to(device)

        if args.kind in ("class", "channel"):
            kw = dict(steps=args.steps or 200, lr=args.lr, image_size=args.size, seed=args.seed, show_progress=not quiet)
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
                res = visualize.deep_dream(loaded, x, args.layer, steps=args.steps or 20, octaves=args.octaves,
                                           seed=args.seed, show_progress=not quiet)
                save(res.images, [f"dream_{s}" for s in stems])
            elif args.kind == "invert":
                res = visualize.invert_features(loaded, x, args.layer, steps=args.steps or 200, tv_weight=args.tv_weight,
                                                seed=args.seed, show_progress=not quiet)
                save(res.images, [f"invert_{s}" for s in stems])
            else:
                res = visualize.fooling_image(loaded, x, args.target_class, max_steps=args.steps or 100,
                                              show_progress=not quiet)
                save(res.images, [f"fool_{s}" for s in stems])
                for s, ok, st, linf in zip(stems, res.fooled.tolist(), res.steps.tolist(), res.linf.tolist()):
                    print(f"{s}: {'fooled' if ok else 'not fooled'} after {st} steps, L-inf {linf * 255:.2f}/255")
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
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
    parser = _parser()
    args = parser.parse_args(argv)
    return args.func(args, parser)


if __name__ == "__main__":
    raise SystemExit(main())
