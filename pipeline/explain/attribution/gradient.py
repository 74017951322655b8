"""Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional Networks", sec. 3.1: the gradient
of the unnormalised class score S_y with respect to the image."""

from pipeline.explain.attribution.base import Attribution


class Saliency(Attribution):
    """dS_y/dx."""

    def attribute(self, images, targets):
        return self.gradients(images, targets)
