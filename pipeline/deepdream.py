"""``python -m pipeline.deepdream``: the deepdream job (pipeline/explain/deepdream.py)."""

from pipeline.explain.deepdream import main

if __name__ == "__main__":
    main()
