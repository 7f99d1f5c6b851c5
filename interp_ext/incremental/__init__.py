"""Exact incremental occlusion (beyond Krypton, Nakandala et al. SIGMOD 2019): an occluded
copy differs from the clean image only inside its window, and a convolution is local, so
each layer recomputes only the region the window reaches, batched across windows, from
the clean run's activations. `attr.Occlusion(..., incremental=...)` uses it."""
from .graph import capture
from .occlusion import WindowGrid, input_patches, plan_for
from .plan import OcclusionPlan

__all__ = ["OcclusionPlan", "WindowGrid", "capture", "input_patches", "plan_for"]
