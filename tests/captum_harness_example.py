"""A script as a Captum user writes it (the README / tutorial style): a toy model, a few
attribution methods, their numbers printed. tests/test_compat_captum_example.py runs it
as written (on Captum) and with only the import line changed to
``from interp_ext.compat.captum import ...``, and compares what the two print."""
import json

import torch
import torch.nn as nn

from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency, ShapleyValueSampling


class TinyNet(nn.Module):
    """Two linear layers with a ReLU between, weights set by hand."""

    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(3, 4)
        self.relu = nn.ReLU()
        self.lin2 = nn.Linear(4, 2)
        with torch.no_grad():
            self.lin1.weight.copy_(torch.linspace(-1.5, 1.5, 12).view(4, 3))
            self.lin1.bias.fill_(0.1)
            self.lin2.weight.copy_(torch.linspace(-1.0, 2.0, 8).view(2, 4))
            self.lin2.bias.zero_()

    def forward(self, x):
        return self.lin2(self.relu(self.lin1(x)))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3)))


torch.manual_seed(123)
model = TinyNet().eval()
inputs = torch.rand(2, 3)
baselines = torch.zeros(2, 3)

ig = IntegratedGradients(model)
attributions, delta = ig.attribute(inputs, baselines, target=0, return_convergence_delta=True)
print("IG attributions:", attributions)
print("convergence delta:", delta)

saliency = Saliency(model).attribute(inputs, target=1)
smooth = NoiseTunnel(Saliency(model)).attribute(inputs, nt_type="smoothgrad", nt_samples=8, stdevs=0.1, target=1)
print("saliency:", saliency)
print("smoothgrad:", smooth)

svs = ShapleyValueSampling(model).attribute(inputs, target=0, n_samples=20, feature_mask=torch.tensor([[0, 0, 1]]))
print("shapley:", svs)

cnn = TinyCNN().eval()
image = torch.rand(2, 1, 8, 8)
occlusion = Occlusion(cnn).attribute(image, sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2), target=2)
cam = LayerGradCam(cnn, cnn.conv).attribute(image, target=2, relu_attributions=True)
upsampled = LayerAttribution.interpolate(cam, (8, 8), interpolate_mode="bilinear")
print("occlusion:", occlusion.shape, "grad-cam:", cam.shape, "upsampled:", upsampled.shape)

print(json.dumps({
    "ig": attributions.tolist(), "delta": delta.tolist(), "saliency": saliency.tolist(), "smoothgrad": smooth.tolist(),
    "shapley": svs.tolist(), "occlusion": occlusion.tolist(), "gradcam": upsampled.tolist(),
}))
