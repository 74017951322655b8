"""Gradient attribution: which pixels the class score is most sensitive to. One module per method
(``gradient``, ``smoothgrad``, ``gradient_x_input``, ``integrated_gradients``) on ``base.Attribution``;
``pipeline.explain.attribution.registry`` builds a method from its ``conf/attribution/<name>.yaml``."""
