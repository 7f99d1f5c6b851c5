"""Captum's attribution API over interp_ext's paths: change ``from captum.attr import X``
to ``from interp_ext.compat.captum import X``.

Classes: `Occlusion`, `ShapleyValueSampling`, `ShapleyValues`, `Saliency`,
`InputXGradient`, `IntegratedGradients`, `NoiseTunnel`, `GuidedBackprop`, `Deconvolution`,
`NeuronGuidedBackprop`, `NeuronDeconvolution`, `GuidedGradCam`, `LayerGradCam`,
`LayerAttribution` (``interpolate``), and the bases `Attribution`, `GradientAttribution`,
`PerturbationAttribution`.

Same names, signatures, defaults, argument forms (a tensor or a tuple of tensors,
``additional_forward_args``, every target form, baselines None / number / tensor / tuple,
feature masks, ``perturbations_per_eval``, ``show_progress``, ``return_convergence_delta``
...) and return shapes as Captum 0.9; numbers equal to Captum's to float rounding, with
these differences on purpose:

- the guided / deconvnet methods rectify every spelling of a ReLU (``F.relu``, ReLU6,
  in-place and reused modules ...), where Captum's hooks catch ``nn.ReLU`` modules only;
- the perturbation methods evaluate less (Shapley: the baseline and the input once, not
  once per permutation) and build their copies with native kernels;
- bad arguments raise ``ValueError`` / ``TypeError`` subclasses that name the argument
  (also ``AssertionError`` subclasses, the type Captum's checks raise).

Like Captum's, these classes never switch the model to eval mode: call ``model.eval()``
first. Nothing here imports Captum.
"""
from ._common import (
    Attribution,
    CaptumArgumentError,
    CaptumTypeError,
    GradientAttribution,
    PerturbationAttribution,
)
from ._gradient import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NeuronDeconvolution,
    NeuronGuidedBackprop,
    Saliency,
)
from ._noise_tunnel import NoiseTunnel
from ._perturbation import Occlusion, ShapleyValues, ShapleyValueSampling

__all__ = [
    "Attribution",
    "CaptumArgumentError",
    "CaptumTypeError",
    "Deconvolution",
    "GradientAttribution",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "IntegratedGradients",
    "LayerAttribution",
    "LayerGradCam",
    "NeuronDeconvolution",
    "NeuronGuidedBackprop",
    "NoiseTunnel",
    "Occlusion",
    "PerturbationAttribution",
    "Saliency",
    "ShapleyValueSampling",
    "ShapleyValues",
]
