"""Exact incremental occlusion (beyond Krypton, Nakandala et al. SIGMOD 2019): an occluded
copy differs from the clean image only inside its window, and a convolution is local, so
each layer recomputes only the region the window reaches, batched across windows, from
the clean run's activations. `attr.Occlusion(..., incremental=...)` uses it."""
from .graph import capture
from .chain import chain_plan, patch_grid, run_chain
from .occlusion import WindowGrid, cached_plan, input_patches, plan_for, worth_tracing
from .plan import OcclusionPlan

__all__ = ["OcclusionPlan", "WindowGrid", "cached_plan", "capture", "chain_plan", "input_patches", "patch_grid",
           "plan_for", "run_chain", "worth_tracing"]
