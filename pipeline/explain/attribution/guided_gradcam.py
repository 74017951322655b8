"""Selvaraju et al. 2017, sec. 3.2: Guided Grad-CAM, guided backprop times the upsampled Grad-CAM map:
fine detail from the one, class discrimination from the other."""

from pipeline.explain.attribution.base import Attribution
from pipeline.explain.attribution.gradcam import GradCAM
from pipeline.explain.attribution.guided_backprop import GuidedBackprop


class GuidedGradCAM(Attribution):
    def __init__(self, model, *, layer: str = "auto", **kwargs):
        super().__init__(model, **kwargs)
        self.gradcam = GradCAM(model, layer=layer, **kwargs)
        self.guided = GuidedBackprop(model, **kwargs)
        self.layer = self.gradcam.layer

    def attribute(self, images, targets):
        return self.guided.attribute(images, targets) * self.gradcam.attribute(images, targets)
