"""``python -m pipeline.models``: layer indices, names and output shapes (pipeline/model/listing.py)."""

from pipeline.model.listing import main

if __name__ == "__main__":
    main()
