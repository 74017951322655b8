"""Any image classifier through the same pipeline: a torchvision architecture or a user's own ``nn.Module``.

``WrappedClassifier`` gives any module the ``ImageClassifier`` interface (pixels in, named layers,
``forward(x, end=...)``), so saliency, fooling, class visualization, inversion and DeepDream run on
it unchanged. ``build_external`` builds one from ``conf/model/torchvision.yaml`` or
``conf/model/module.yaml`` and loads its weights through ``pipeline.data.fetch`` (never torch.hub:
the pipeline's mirrors, credentials, resume, size limits and redaction apply).

An ImageNet-1k model works on TinyImageNet directly: the dataset's classes are ILSVRC-2012 wnids,
so its 1000 logits are restricted to the dataset's wnids, in the dataset's class order, with the
standard index -> wnid table (``imagenet1k_wnids.txt``: the 1000 sorted wnids, torchvision's order).
"""

from __future__ import annotations

import difflib
import hashlib
import functools
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.fetch import fetch, is_sha256, sha256_file
from pipeline.errors import ConfigError, DataError, one_line
from pipeline.model.architectures import ImageClassifier, _plain
from pipeline.redaction import redact

log = logging.getLogger(__name__)

IMAGENET_WNIDS = Path(__file__).with_name("imagenet1k_wnids.txt")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's normalisation, in 0..1 units
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("torchvision", "module")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")  # torchvision / torch.hub file names: resnet50-11ad3fa6.pth


# --------------------------------------------------------------------------- ImageNet classes


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 wnids in the standard class-index order."""
    wnids = tuple(IMAGENET_WNIDS.read_text().split())
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise DataError(f"{IMAGENET_WNIDS} must hold 1000 distinct wnids, holds {len(set(wnids))}")
    return wnids


def imagenet_columns(wnids: Sequence[str]) -> torch.Tensor:
    """Indices (LongTensor) of the dataset's ``wnids`` among the 1000 ImageNet-1k logits, in the dataset's order."""
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [w for w in wnids if w not in index]
    if unknown:
        raise ConfigError(f"class {unknown[0]!r} is not one of the 1000 ImageNet-1k classes ({len(unknown)} of the "
                          f"dataset's {len(wnids)} are not), so a 1000-class ImageNet model cannot score it")
    return torch.tensor([index[w] for w in wnids], dtype=torch.long)


# --------------------------------------------------------------------------- the wrapper


def block_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Candidate layers: the top-level children, those that are containers of blocks (``nn.Sequential``,
    ``nn.ModuleList``) expanded one level (resnet50: layer1.0 .. layer4.2; vgg: features.0 ..)."""
    out = []
    for name, child in net.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child):
            out += [(f"{name}.{k}", m) for k, m in child.named_children()]
        else:
            out.append((name, child))
    return out


def run_order(net: nn.Module, candidates: list[tuple[str, nn.Module]], x: torch.Tensor):
    """(names, output shapes without batch, network output) of the candidates that run exactly once in
    ``net(x)`` and return a tensor that the rest of the forward leaves as it is, in the order they run.
    Modules a forward skips (aux heads in eval mode) or calls several times (a shared ReLU), and outputs
    it then changes in place (densenet's ``F.relu(features, inplace=True)``), have no single output
    to stand for a layer."""
    calls: dict[str, list] = {}

    def hook(name):
        def record(module, args, output):
            tensor = output if isinstance(output, torch.Tensor) else None
            calls.setdefault(name, []).append((tensor, None if tensor is None else tensor._version))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in candidates]
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name, seen in calls.items()  # dicts keep call order
             if len(seen) == 1 and seen[0][0] is not None and seen[0][0]._version == seen[0][1]]
    return names, [tuple(calls[name][0][0].shape[1:]) for name in names], out


def _logits(out) -> torch.Tensor:
    """The class scores of a forward's output (a tensor, or an object / tuple that holds them first)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError(f"the model's forward returned {type(out).__name__}, not a tensor of class scores")


def _channels(values, what: str) -> torch.Tensor:
    """3 (or 1, for all channels) positive numbers in 0..1 units -> a (3, 1, 1) tensor."""
    try:
        t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"model.{what} must be a list of 3 numbers (0..1 units), got {values!r}") from None
    if t.numel() not in (1, 3) or (what == "std" and bool((t <= 0).any())):
        extra = ", > 0" if what == "std" else ""
        raise ConfigError(f"model.{what} must be 3 numbers (0..1 units{extra}), got {values!r}")
    return t.reshape(-1, 1, 1).expand(3, 1, 1).clone()


class WrappedClassifier(ImageClassifier):
    """Any ``nn.Module`` classifier as an ``ImageClassifier``: pixel-space input (0..255) and named layers.

    Preprocessing, in this order: resize, x / 255, (x - mean) / std (the model's own normalisation;
    ImageNet's by default). The resize rule: images of the dataset's size ``image_size`` are resized
    to ``input_size`` (bilinear, differentiable; None: never resize), so a 224 px ImageNet model sees
    64 px TinyImageNet images at the scale it was trained at; images of any other size (DeepDream on
    a 256 px photo) go through as they are, since a convolutional net takes any size. ``mean_image``
    is the mean colour at ``image_size``: the "zero" image of L2 priors, blur padding and start noise.

    Layers are the wrapped module's own dotted names (``layer3.1`` for a resnet), found by one dummy
    forward pass (``block_layers``, ``run_order``); ``num_spatial`` counts the leading layers whose output
    is a map larger than 1x1 at the input size the model sees (a global pool's 1x1 output is no map
    for Grad-CAM or DeepDream; 4-D outputs are taken as N x C x H x W, which a channels-last
    transformer such as swin's is not). ``columns`` (LongTensor) restricts the output to those
    logits: the dataset's classes among ImageNet's 1000.

    In-place activations are switched off: a later in-place op would overwrite the outputs that the
    layer hooks hand out, and full backward hooks (guided backprop) refuse in-place outputs.
    """

    def __init__(self, net: nn.Module, *, image_size: int = 64, input_size: int | None = 224,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 columns: torch.Tensor | None = None):
        image_size = int(image_size)
        if image_size < 1 or (input_size is not None and int(input_size) < 1):
            raise ConfigError(f"image and input sizes must be >= 1, got {image_size} and {input_size}")
        mean_t, std_t = _channels(mean, "mean"), _channels(std, "std")
        super().__init__(0, (mean_t * 255).expand(3, image_size, image_size))
        self.image_size = image_size
        self.input_size = None if input_size is None else int(input_size)
        self.register_buffer("input_mean", mean_t * 255)  # pixel units
        self.register_buffer("input_std", std_t * 255)
        self.register_buffer("columns", None if columns is None else torch.as_tensor(columns, dtype=torch.long),
                             persistent=False)  # derived from the dataset's wnids, which travel with the model
        for m in net.modules():
            if getattr(m, "inplace", False) is True:
                m.inplace = False
        self.net = net.eval()
        probe = self.resize(torch.zeros(1, 3, image_size, image_size))
        names, shapes, out = run_order(net, block_layers(net), self._net_input(probe))
        scores = _logits(out)
        if scores.dim() != 2:
            raise ConfigError(f"{type(net).__name__} outputs shape {tuple(scores.shape)}; expected (N, classes)")
        self.num_outputs = int(scores.shape[1])
        if self.columns is not None and (len(self.columns) == 0 or int(self.columns.max()) >= self.num_outputs):
            raise ConfigError(f"output columns {self.columns.tolist()[:5]}... do not fit {self.num_outputs} outputs")
        self.num_classes = self.num_outputs if self.columns is None else len(self.columns)
        self.layer_names = names
        spatial = [len(s) == 3 and s[-2] * s[-1] > 1 for s in shapes]
        self.num_spatial = spatial.index(False) if False in spatial else len(spatial)

    # -- preprocessing

    def input_size_for(self, size):
        if self.input_size is not None and tuple(size) == (self.image_size, self.image_size):
            return (self.input_size, self.input_size)
        return tuple(size)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Images of the dataset's size -> the model's input size; other sizes unchanged."""
        size = self.input_size_for(x.shape[-2:])
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < x.shape[-2])

    def _net_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected pixel images of shape (N, 3, H, W), got {tuple(x.shape)}")
        return self._net_input(self.resize(x))

    # -- layers: the wrapped module's own names

    def get_submodule(self, target: str) -> nn.Module:
        """``layer3.1`` names the wrapped module's layer; the wrapper's own paths (``net.layer3.1``) still work."""
        if target:
            try:
                return self.net.get_submodule(target)
            except AttributeError:
                pass
        return super().get_submodule(target)

    # -- forward

    def forward(self, x: torch.Tensor, end: int | str | None = None) -> torch.Tensor:
        if end is not None:
            return super().forward(x, end)
        scores = _logits(self.net(self.normalize(x)))
        return scores if self.columns is None else scores.index_select(1, self.columns)


# --------------------------------------------------------------------------- building from a config


def _get(cfg: Mapping, key: str, default=None):
    value = cfg.get(key, default) if hasattr(cfg, "get") else default
    return default if value is None else value


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_net(name: str, options: dict) -> nn.Module:
    import torchvision

    names = torchvision_names()
    if name not in names:
        near = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ConfigError(f"unknown torchvision classification model {name!r}; {hint}"
                          f"known: {len(names)} names (torchvision.models.list_models(module=torchvision.models))")
    try:
        return torchvision.models.get_model(name, weights=None, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"torchvision model {name}: bad model.options {options}: {one_line(exc)}") from None


def torchvision_weights(name: str, spec: str):
    """The torchvision weights enum member for ``name`` and ``spec`` (``DEFAULT``, ``IMAGENET1K_V2`` or
    ``ResNet50_Weights.IMAGENET1K_V2``), or None when ``spec`` names none of them (a file or URL)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (KeyError, ValueError):
        return None
    member = spec.split(".", 1)[1] if spec.startswith(enum.__name__ + ".") else spec
    if member in enum.__members__:
        return enum[member]
    if spec.startswith(enum.__name__ + ".") or (re.fullmatch(r"[A-Z][A-Z0-9_]*", spec) and not os.path.exists(spec)):
        raise ConfigError(f"torchvision model {name} has no weights {spec!r}; choose DEFAULT or one of "
                          f"{', '.join(m for m in enum.__members__ if m != 'DEFAULT')}")
    return None


def _module_net(target: str, options: dict) -> nn.Module:
    from hydra.utils import get_object

    if not target:
        raise ConfigError("model._target_ must name an nn.Module class or factory (package.module.Name)")
    try:
        factory = get_object(str(target))
    except Exception as exc:  # ImportError, AttributeError, hydra's own wrapping
        raise ConfigError(f"model._target_={target!r} cannot be imported: {one_line(exc, 300)}") from None
    try:
        net = factory(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model._target_={target!r} with options {options}: {one_line(exc, 300)}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model._target_={target!r} built a {type(net).__name__}, not an nn.Module")
    return net


def fetch_cached(url: str, cache_dir: str | os.PathLike, *, sha256: str | None = None,
                 progress: bool | None = None) -> tuple[Path, str]:
    """(local copy, its sha256) of ``url`` in ``cache_dir``: one file per URL, named by a digest of the
    URL with its credentials redacted (never the URL itself) and the URL's file name; re-used when
    present and, if ``sha256`` is given, matching it. Delete the file to fetch again. Every fetched
    model (``model.url``, ``model.weights``) goes through here."""
    base = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "weights"
    key = hashlib.sha256(redact(url).encode()).hexdigest()[:12]  # one file name from two places: two entries
    dest = Path(cache_dir) / f"{key}-{base}"
    if dest.is_file():
        digest = sha256_file(dest)
        if not sha256 or digest == sha256.lower():
            return dest, digest
    return dest, fetch(url, dest, sha256=sha256 or None, progress=progress)


def _weights_file(spec: str, enum_member, cache_dir, sha256: str | None, progress) -> tuple[Path, str, str]:
    """(local file, its sha256, what to record) for a weights spec: an enum member, a URL or a path."""
    if sha256 is not None and not is_sha256(sha256):
        raise ConfigError(f"model.sha256={sha256!r} is not 64 hexadecimal characters")
    if enum_member is not None:
        url = enum_member.url
        path, digest = fetch_cached(url, cache_dir, sha256=sha256, progress=progress)
        named = _HASH_IN_NAME.search(Path(urllib.parse.urlsplit(url).path).name)
        if named and not digest.startswith(named.group(1)):  # torch.hub's check: the name carries a sha256 prefix
            raise DataError(f"{path.name}: sha256 {digest[:12]}... does not match the {named.group(1)} in its name "
                            f"(delete it to download again)")
        return path, digest, f"{type(enum_member).__name__}.{enum_member.name}"
    scheme = urllib.parse.urlsplit(spec).scheme.lower()
    if scheme in ("http", "https", "file"):
        path, digest = fetch_cached(spec, cache_dir, sha256=sha256, progress=progress)
        return path, digest, redact(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights={redact(spec)!r} is not a file, an http(s)/file URL, DEFAULT or "
                          f"a weights name")
    digest = sha256_file(path)
    if sha256 and digest != sha256.lower():
        raise DataError(f"{path.name}: sha256 {digest} does not match model.sha256 {sha256.lower()}")
    return path, digest, path.name


def read_state_dict(path: Path, shown: str) -> dict[str, torch.Tensor]:
    """A state dict from a torch file (``weights_only``: no code runs). Checkpoints that nest it under
    ``state_dict`` / ``model`` and DataParallel's ``module.`` prefix are unwrapped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip or weights_only refusals
        raise DataError(f"{shown}: cannot read as a torch state dict ({one_line(exc, 200)})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{shown}: not a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def load_weights(net: nn.Module, state: Mapping[str, torch.Tensor], shown: str, what: str) -> None:
    """``net.load_state_dict(state)``, or a one-line DataError saying what does not fit."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]

    def few(items):
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    problems = [f"{label}: {few(items)}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items]
    if problems:
        raise DataError(f"{shown}: state dict does not fit {what}; " + "; ".join(problems))
    net.load_state_dict(state)


def build_external(model_cfg: Mapping, *, wnids: Sequence[str], image_size: int, cache_dir: str | os.PathLike,
                   progress: bool | None = None) -> tuple[ImageClassifier, dict]:
    """(model in eval mode on the CPU, metadata) for ``conf/model/torchvision.yaml`` / ``module.yaml``.

    ``model.weights``: null (the architecture's random init; the caller seeds it), a local file, an
    http(s)/file URL (fetched into ``cache_dir``), or for torchvision ``DEFAULT`` / a weights name
    (``IMAGENET1K_V2``: torchvision's URL, fetched the same way). The output must have one logit per
    dataset class, or 1000 ImageNet-1k logits, which are restricted to the dataset's ``wnids``.
    """
    source = _get(model_cfg, "source")
    if source not in SOURCES:
        raise ConfigError(f"model.source={source!r} is not an external model source ({' | '.join(SOURCES)})")
    options = dict(_plain(_get(model_cfg, "options", {})))
    default_size = 224 if source == "torchvision" else None
    input_size = model_cfg.get("input_size", default_size) if hasattr(model_cfg, "get") else default_size
    if input_size is not None and (isinstance(input_size, bool) or not str(input_size).isdigit()):
        raise ConfigError(f"model.input_size={input_size!r}: expected a number of pixels or null (no resize)")
    mean = _plain(_get(model_cfg, "mean", IMAGENET_MEAN))
    std = _plain(_get(model_cfg, "std", IMAGENET_STD))
    arch = {"arch": source, "source": source}
    enum_member = None
    weights = _get(model_cfg, "weights")
    if weights is not None and str(weights).strip().lower() in ("", "none", "null", "random"):
        weights = None
    if source == "torchvision":
        name = str(_get(model_cfg, "name", ""))
        net = _torchvision_net(name, options)
        arch["name"] = name
        what = f"torchvision {name}"
        if weights is not None:
            enum_member = torchvision_weights(name, weights)
        if enum_member is not None:
            crop = getattr(enum_member.transforms, "keywords", {}).get("crop_size")
            if crop and input_size is not None and int(crop) != int(input_size):
                log.warning("%s weights %s expect %d px inputs; model.input_size is %s", name, enum_member.name,
                            crop, input_size)
            if hasattr(net, "transform_input"):  # torchvision sets it for these weights (inception, googlenet)
                net.transform_input = True
                options["transform_input"] = True  # so the checkpoint rebuilds the same net
    else:
        target = str(_get(model_cfg, "_target_", ""))
        net = _module_net(target, options)
        arch["_target_"] = target
        what = target
    arch.update(options=options, input_size=None if input_size is None else int(input_size),
                mean=[float(v) for v in mean], std=[float(v) for v in std])

    meta = {"arch": arch, "source": source, "weights": None, "weights_sha256": None}
    if weights is not None:
        path, digest, shown = _weights_file(weights, enum_member, Path(cache_dir), _get(model_cfg, "sha256"), progress)
        load_weights(net, read_state_dict(path, shown), shown, what)
        meta.update(weights=shown, weights_sha256=digest)

    model = WrappedClassifier(net, image_size=image_size, input_size=input_size, mean=mean, std=std)
    wnids = list(wnids)
    if model.num_outputs == 1000 and len(wnids) != 1000:
        model.columns = imagenet_columns(wnids)
        model.num_classes = len(wnids)
    elif model.num_outputs != len(wnids):
        raise ConfigError(f"{what} has {model.num_outputs} outputs but the dataset has {len(wnids)} classes; it needs "
                          f"{len(wnids)} outputs (e.g. model.options.num_classes) or the 1000 of ImageNet-1k")
    meta.update(num_outputs=model.num_outputs, restricted_to=None if model.columns is None else len(wnids),
                input_size=arch["input_size"], image_size=int(image_size))
    return model.eval(), meta
