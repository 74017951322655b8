"""``python -m pipeline.compare``: a sweep's runs side by side (pipeline/track/compare.py)."""

import sys

from pipeline.track.compare import main

if __name__ == "__main__":
    sys.exit(main())
