"""``python -m pipeline.report``: the report job (pipeline/track/report.py)."""

from pipeline.track.report import main

if __name__ == "__main__":
    main()
