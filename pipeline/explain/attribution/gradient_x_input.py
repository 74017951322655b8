"""Shrikumar et al. 2016, "Not Just a Black Box": gradient times input."""

from pipeline.explain.attribution.base import Attribution, as_float, baseline_like


class GradientXInput(Attribution):
    """Gradient times (image - baseline); baseline = the model's mean image, i.e. the input the
    network sees as zero."""

    def attribute(self, images, targets):
        grad = self.gradients(images, targets).cpu()
        return grad * (as_float(images) - baseline_like(self.model, images))
