"""``python -m pipeline.class_viz``: the class_viz job (pipeline/explain/class_viz.py)."""

from pipeline.explain.class_viz import main

if __name__ == "__main__":
    main()
