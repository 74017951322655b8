"""``python -m pipeline.train``: the train job (pipeline/model/train.py)."""

from pipeline.model.train import main

if __name__ == "__main__":
    main()
