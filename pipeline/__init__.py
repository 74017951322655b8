"""Gradient-based explanations and stress tests of a TinyImageNet-100-A classifier.

Each job is a Hydra app (``python -m pipeline.<job>``) and a DVC stage; every run is
recorded in MLflow. See README.md.
"""
