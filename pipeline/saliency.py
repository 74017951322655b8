"""``python -m pipeline.saliency``: the saliency job (pipeline/explain/saliency.py)."""

from pipeline.explain.saliency import main

if __name__ == "__main__":
    main()
