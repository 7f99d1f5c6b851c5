"""Shared benchmark plumbing: timing, machine description, JSON + markdown output."""
from __future__ import annotations

import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.utils.benchmark as tbench

RESULTS = Path(__file__).resolve().parent / "results"
L2_ROTATE_BYTES = 256 << 20  # rotate GPU inputs across more than any L2 (H100: 50 MB, H200: 60 MB)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: str, min_run_time: float) -> float:
    """Median time of one call, from torch.utils.benchmark (which synchronises CUDA)."""
    fn()  # warm-up (allocations, lazy init, compilation)
    sync(device)
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def interleaved_medians(fns: dict[str, Callable[[], object]], device: str, rounds: int) -> dict[str, float]:
    """Median seconds per function, timing one call of each in turn for `rounds` rounds,
    so that slow drifts of a noisy machine hit every contender alike. For calls long
    enough (~0.1 s and up) that one sample is meaningful."""
    for fn in fns.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: sorted(v)[len(v) // 2] for name, v in samples.items()}


def rotating(make: Callable[[], tuple], device: str, bytes_per_set: int) -> Callable[[], tuple]:
    """On a GPU, cycle through enough input sets that repeated calls do not hit L2."""
    if device != "cuda":
        sets = [make()]
    else:
        sets = [make() for _ in range(max(1, min(16, L2_ROTATE_BYTES // max(1, bytes_per_set) + 1)))]
    cycle = itertools.cycle(sets)
    return lambda: next(cycle)


def machine(device: str) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def thread_settings(device: str) -> Sequence[int]:
    """CPU: 1 thread (this VM's second core is noisy) and the default; GPU: default."""
    default = torch.get_num_threads()
    return [default] if device == "cuda" else sorted({1, default})


def native_vs_eager_rows(device: str, label: str, shapes, min_run_time: float, setup) -> list[dict]:
    """Per thread setting and shape: ``setup(shape)`` checks the native op against the
    reference and returns (native, eager) callables; their median times and ratio."""
    rows = []
    default_threads = torch.get_num_threads()
    for threads in thread_settings(device):
        torch.set_num_threads(threads)
        for shape in shapes:
            native, eager = setup(shape)
            row = {"device": device, "threads": threads, "shape": "x".join(map(str, shape))}
            row["interp_ext_ms"] = 1e3 * median_seconds(native, device, min_run_time)
            row["eager_ms"] = 1e3 * median_seconds(eager, device, min_run_time)
            row["speedup_vs_eager"] = row["eager_ms"] / row["interp_ext_ms"]
            rows.append(row)
            print(f"[{device} t={threads}] {label} {row['shape']}: interp_ext {row['interp_ext_ms']:.3g} ms, "
                  f"eager {row['eager_ms']:.3g} ms (x{row['speedup_vs_eager']:.1f})", flush=True)
    torch.set_num_threads(default_threads)
    return rows


def run_process(cmd: Sequence[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run a whole process; its wall seconds (perf_counter around start and reap), its own
    peak RSS (``os.wait4``'s rusage of that child, MB), exit code and the tail of stderr."""
    import subprocess
    import tempfile
    import threading

    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read()[-4000:].decode("utf-8", "replace")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "rc": proc.returncode, "stderr": tail}


class PassCounter:
    """Counts and times the model's passes in this process: forward calls of modules of
    `model_class` or of copies folded from it (``folded_from``, interp_ext.fusion; global
    module hooks, so it finds the model however the job loaded it)
    and backward passes (calls of ``torch.autograd.grad`` and ``torch.autograd.backward``,
    which ``Tensor.backward`` goes through). Seconds are perf_counter around each call."""

    def __init__(self, model_class: type):
        self.model_class = model_class
        self.forwards = self.backwards = 0
        self.forward_s = self.backward_s = 0.0
        self._starts: list[float] = []
        self._handles: list = []
        self._saved: dict = {}

    def __enter__(self) -> "PassCounter":
        from torch.nn.modules import module as nn_module

        def counted_module(mod) -> bool:
            return isinstance(mod, self.model_class) or getattr(mod, "folded_from", None) is self.model_class

        def pre(mod, args):
            if counted_module(mod):
                self._starts.append(time.perf_counter())

        def post(mod, args, out):
            if counted_module(mod) and self._starts:
                self.forwards += 1
                self.forward_s += time.perf_counter() - self._starts.pop()

        self._handles = [nn_module.register_module_forward_pre_hook(pre), nn_module.register_module_forward_hook(post)]
        for name in ("grad", "backward"):
            original = getattr(torch.autograd, name)
            self._saved[name] = original

            def counted(*a, _original=original, **kw):
                t = time.perf_counter()
                try:
                    return _original(*a, **kw)
                finally:
                    self.backwards += 1
                    self.backward_s += time.perf_counter() - t

            setattr(torch.autograd, name, counted)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        for name, original in self._saved.items():
            setattr(torch.autograd, name, original)

    def stats(self) -> dict:
        return {"forwards": self.forwards, "backwards": self.backwards, "forward_s": self.forward_s,
                "backward_s": self.backward_s, "model_s": self.forward_s + self.backward_s}


def write(name: str, payload: dict, markdown: str, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{payload['machine']['device'].replace(' ', '_')}"
    for suffix, text in ((".json", json.dumps(payload, indent=2)), (".md", markdown)):
        tmp = out_dir / f".{stem}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / f"{stem}{suffix}")
    return out_dir / f"{stem}.md"


def md_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
