"""``python -m pipeline.download``: the download job (pipeline/data/download.py)."""

from pipeline.data.download import main

if __name__ == "__main__":
    main()
