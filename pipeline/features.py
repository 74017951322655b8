"""``python -m pipeline.features``: the features job (pipeline/explain/features.py)."""

from pipeline.explain.features import main

if __name__ == "__main__":
    main()
