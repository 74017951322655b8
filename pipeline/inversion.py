"""``python -m pipeline.inversion``: the inversion job (pipeline/explain/inversion.py)."""

from pipeline.explain.inversion import main

if __name__ == "__main__":
    main()
