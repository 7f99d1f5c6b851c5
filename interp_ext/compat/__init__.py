"""Drop-in replacements for other libraries' APIs, on interp_ext's batched, on-device paths.

- :mod:`interp_ext.compat.captum`: Captum's attribution classes (``Occlusion``,
  ``ShapleyValueSampling``, ``IntegratedGradients``, ``NoiseTunnel``, ``LayerGradCam`` ...):
  change ``from captum.attr import X`` to ``from interp_ext.compat.captum import X``.
- :mod:`interp_ext.compat.pytorch_grad_cam`: pytorch-grad-cam's classes, ``__call__``
  contract, ``utils.model_targets`` and ``utils.image``: change
  ``from pytorch_grad_cam import GradCAM`` to
  ``from interp_ext.compat.pytorch_grad_cam import GradCAM``.

Nothing here imports the original libraries (nor OpenCV) at run time.
"""
