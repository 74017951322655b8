"""``python -m pipeline.models [name | classifier.pt]``: every layer's index, name and output shape,
for choosing layers to visualize."""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from pipeline.model.architectures import ImageClassifier, build_model
from pipeline.model.external import build_external, imagenet_wnids
from pipeline.model.sources import EXTERNAL, load_checkpoint


def _describe(title: str, model: ImageClassifier) -> None:
    print(f"{title} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    for i, name, shape in model.layer_shapes():
        kind = "spatial" if model.is_spatial(i) else "flat"
        print(f"  {i:3d}  {name:<16} {str(shape):<18} {kind}")


def main(argv: Sequence[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from pipeline.job import CONF_DIR

    names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    parser = argparse.ArgumentParser(prog="python -m pipeline.models",
                                     description="List layer indices, names and output shapes (64x64 input) "
                                                 "of the nets in conf/model/, or of a saved classifier.")
    parser.add_argument("model", nargs="?", help=f"conf/model name ({', '.join(names)}) or a classifier.pt; "
                                                 "default: every conf/model entry")
    args = parser.parse_args(argv)
    if args.model and args.model not in names:
        if not os.path.isfile(args.model):
            parser.error(f"{args.model!r} is neither a conf/model name ({', '.join(names)}) nor a file")
        model, meta = load_checkpoint(args.model)
        _describe(f"{args.model} [{meta['arch']['arch']}, source {meta.get('source')}]", model)
        return
    for name in [args.model] if args.model else names:
        cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
        if cfg.get("source") not in EXTERNAL:
            _describe(f"conf/model/{name}.yaml", build_model(cfg))
        elif cfg.get("source") == "torchvision":  # its random init: the layers, not the weights, are listed
            model, _ = build_external({**OmegaConf.to_container(cfg), "weights": None}, wnids=imagenet_wnids(),
                                      image_size=64, cache_dir=".")
            _describe(f"conf/model/{name}.yaml: {cfg.name}, 64 px images resized to {cfg.input_size}", model)
        else:
            print(f"conf/model/{name}.yaml: a user's module (model._target_); list it with "
                  f"python -m pipeline.models <its classifier.pt>")


if __name__ == "__main__":
    main()
