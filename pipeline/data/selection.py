"""Which validation images a job looks at, from a small config block::

    select: random | indices | class | correct
    n: 5                  # random, class, correct: how many (null = all that qualify, for class/correct)
    indices: [3, 17]      # indices
    class: goldfish       # class: index, wnid or any words.txt name
    min_confidence: 0.9   # correct: probability of the true class at least this

``correct`` keeps images the model classifies correctly with at least ``min_confidence``
(the reference's "cherry-picked" view). Random draws are seeded.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from pipeline.data.cache import PreparedData
from pipeline.errors import ConfigError

MODES = ("random", "indices", "class", "correct")


def select_images(spec: Mapping, data: PreparedData, *, seed: int,
                  probabilities: Callable[[], torch.Tensor] | None = None, split: str = "val") -> torch.Tensor:
    """Indices into ``split`` chosen by ``spec``; ``probabilities()`` gives (N, classes) for ``correct``."""
    images = data.split(split)
    total = len(images)
    mode = spec.get("select", "random")
    n = spec.get("n")
    if n is not None and int(n) < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    generator = torch.Generator().manual_seed(int(seed))
    if mode == "indices":
        indices = [int(i) for i in (spec.get("indices") or [])]
        if not indices:
            raise ConfigError("select=indices needs a non-empty 'indices' list")
        bad = [i for i in indices if not 0 <= i < total]
        if bad:
            raise ConfigError(f"{split} index {bad[0]} out of range 0..{total - 1}")
        return torch.tensor(indices, dtype=torch.long)
    if mode == "random":
        n = 5 if n is None else int(n)
        if n > total:
            raise ConfigError(f"asked for {n} random {split} images, but the {split} set has only {total}")
        return torch.randperm(total, generator=generator)[:n].sort().values
    if mode == "class":
        if spec.get("class") is None:
            raise ConfigError("select=class needs 'class' (an index, wnid or class name)")
        label = data.class_index(spec["class"])
        pool = (images.labels == label).nonzero()[:, 0]
        what = f"{split} images of class {data.class_names[label]!r}"
    elif mode == "correct":
        if probabilities is None:
            raise ConfigError("select=correct needs the model's predictions")
        probs = probabilities()
        confidence = float(spec.get("min_confidence", 0.0) or 0.0)
        correct = (probs.argmax(1) == images.labels) & (probs.gather(1, images.labels[:, None])[:, 0] >= confidence)
        pool = correct.nonzero()[:, 0]
        what = f"correctly classified {split} images with confidence >= {confidence:g}"
    else:
        raise ConfigError(f"unknown image selection {mode!r}; choose one of {', '.join(MODES)}")
    if n is None:
        if len(pool) == 0:
            raise ConfigError(f"there are no {what}")
        return pool
    if int(n) > len(pool):
        raise ConfigError(f"asked for {n} {what}, but there are only {len(pool)}")
    return pool[torch.randperm(len(pool), generator=generator)[: int(n)]].sort().values


def spread_over_classes(labels: torch.Tensor, n: int) -> list[int]:
    """``n`` indices spread evenly over the classes: the images ordered by (label, index), every len/n-th
    of them (deterministic; 16 of TinyImageNet-100-A's 5,000 val images: one of every 6th class; 1,000:
    10 of every class). All of them when ``n`` is larger."""
    labels = [int(label) for label in labels.tolist()]
    order = sorted(range(len(labels)), key=lambda i: (labels[i], i))
    n = min(int(n), len(order))
    return [order[k * len(order) // n] for k in range(n)]
