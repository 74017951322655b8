"""``python -m pipeline.prepare``: the prepare job (pipeline/data/prepare.py)."""

from pipeline.data.prepare import main

if __name__ == "__main__":
    main()
