"""Explanations through gradients: the image-optimisation engine, attribution methods, faithfulness
tests, and one module per visualization job."""
