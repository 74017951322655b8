"""``python -m pipeline.fooling``: the fooling job (pipeline/explain/fooling.py)."""

from pipeline.explain.fooling import main

if __name__ == "__main__":
    main()
