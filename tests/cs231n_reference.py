"""A float64 numpy port of the CS231n 2016 assignment-3 reference (test code only, no torch).

Written from the reference text (``shared/reference/cs231n-2016-assignment3-notes.txt``: the five
functions) and the starter's helpers and call sites (``notes/cs231n_callsites.md``: ``PretrainedCNN``,
the test-mode layers of ``cs231n/layers.py``, ``blur_image``). Used by ``test_models.py`` (the
forward pass of ``CS231nNet``) and ``test_reference_exactness.py`` (the jobs' trajectories).

Conventions of the reference, kept here: images ``X`` are *mean-subtracted* (pixels minus the mean
image; DeepDream: minus the mean pixel), N x 3 x H x W; ``forward(X, start, end)`` is inclusive of
``end`` (layers 0..8 conv-BN-ReLU, 9 affine-BN-ReLU, 10 the scores); batchnorm runs in test mode
with the running statistics and eps 1e-5.

Changes to the reference functions, all marked ``# port:``: the random draws come in as arguments
(the initial ``X`` that the reference draws with ``np.random.randn``, the per-step jitter offsets
``(ox, oy)`` it draws with ``np.random.randint``), ``data['mean_image']`` is an argument, each
function returns the list of ``X`` it went through (the start, then ``X`` at the end of every
iteration) besides its result, ``clipped`` (a list) collects how many values each clip changed,
and the display code (``plt``, ``print``) is left out. Everything runs in float64 (the
original casts to float32 in ``forward``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (kernel, stride, pad, filters) of the nine conv-BN-ReLU blocks (PretrainedCNN.__init__)
CONVS = [(5, 2, 2, 64), (3, 1, 1, 64), (3, 2, 1, 128), (3, 1, 1, 128), (3, 2, 1, 256),
         (3, 1, 1, 256), (3, 2, 1, 512), (3, 1, 1, 512), (3, 2, 1, 1024)]
EPS = 1e-5  # bn_param.get('eps', 1e-5)


# --------------------------------------------------------------------------- weights


def random_weights(seed: int = 0, num_classes: int = 100) -> dict[str, np.ndarray]:
    """Random float32 parameters in the layout of the original pretrained_model.h5."""
    rng = np.random.default_rng(seed)
    p, cin = {}, 3

    def bn(i, n):
        p[f"gamma{i}"] = rng.uniform(0.5, 1.5, n)
        p[f"beta{i}"] = rng.normal(0, 0.2, n)
        p[f"running_mean{i}"] = rng.normal(0, 0.5, n)
        p[f"running_var{i}"] = rng.uniform(0.5, 2.0, n)

    for i, (k, _, _, f) in enumerate(CONVS, start=1):
        p[f"W{i}"] = rng.normal(0, np.sqrt(2 / (cin * k * k)), (f, cin, k, k))
        p[f"b{i}"] = rng.normal(0, 0.1, f)
        bn(i, f)
        cin = f
    p["W10"], p["b10"] = rng.normal(0, np.sqrt(2 / 4096), (512, 4096)), rng.normal(0, 0.1, 512)
    bn(10, 512)
    p["W11"], p["b11"] = rng.normal(0, np.sqrt(1 / 512), (num_classes, 512)), rng.normal(0, 0.1, num_classes)
    return {k: v.astype(np.float32) for k, v in p.items()}


def calibrated_weights(calibration: np.ndarray, seed: int = 0, margin: float = 5.0, num_classes: int = 100,
                       score_scale: float = 1.0, layer_scales: dict[int, float] | None = None) -> dict[str, np.ndarray]:
    """``random_weights`` whose batchnorm keeps every ReLU input away from 0.

    The running statistics are the per-channel batch statistics of ``calibration`` (mean-subtracted
    images, as a trained network's would be of its data), and each channel's shift is
    ``beta = +-margin * gamma`` (random signs): a channel is on unless its normalised input is below
    ``-margin``, or off unless it is above ``margin``. A float32 forward pass then takes the same
    ReLU branches as a float64 one (a ReLU input within rounding error of 0 would make two
    trajectories part at once, by a whole unit's share of the gradient). ``layer_scales`` {layer:
    factor} multiplies the output of conv-BN-ReLU layers (gamma and beta; the later layers are
    calibrated on the scaled outputs), ``score_scale`` the class scores (W11, b11): the gradients
    then suit the reference's fixed step sizes. ``calibration`` must be 64x64 (the affine layer)."""
    layer_scales = layer_scales or {}
    p = random_weights(seed, num_classes)
    rng = np.random.default_rng(seed + 1)
    model = PretrainedCNN(p)
    a = np.asarray(calibration, dtype=np.float64)
    for i in range(len(CONVS) + 1):
        i1 = i + 1
        if i < len(CONVS):
            pre = conv_forward(a, model.params[f"W{i1}"], model.params[f"b{i1}"], model.conv_params[i])[0]
            axes = (0, 2, 3)
        else:
            pre = affine_forward(a, model.params[f"W{i1}"], model.params[f"b{i1}"])[0]
            axes = (0,)
        p[f"running_mean{i1}"] = pre.mean(axis=axes).astype(np.float32)
        p[f"running_var{i1}"] = pre.var(axis=axes).astype(np.float32)
        sign = np.where(rng.random(p[f"gamma{i1}"].shape) < 0.5, -1.0, 1.0)
        p[f"gamma{i1}"] = (p[f"gamma{i1}"] * layer_scales.get(i, 1.0)).astype(np.float32)
        p[f"beta{i1}"] = (sign * margin * p[f"gamma{i1}"]).astype(np.float32)
        model = PretrainedCNN(p)
        bn_param = {"running_mean": model.params[f"running_mean{i1}"], "running_var": model.params[f"running_var{i1}"]}
        bn = spatial_batchnorm_forward if i < len(CONVS) else batchnorm_forward
        a = np.maximum(bn(pre, model.params[f"gamma{i1}"], model.params[f"beta{i1}"], bn_param)[0], 0)
    p["W11"] = (p["W11"] * score_scale).astype(np.float32)
    p["b11"] = (p["b11"] * score_scale).astype(np.float32)
    return p


def write_h5(path: Path, params: dict[str, np.ndarray]) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for name, value in params.items():
            f.create_dataset(name, data=value)
    return path


# --------------------------------------------------------------------------- layers (test mode)


def _cols(x, kh, kw, stride, pad):
    """im2col by slicing: (N, C, kh, kw, Ho, Wo) of the zero-padded input."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=np.result_type(x, np.float64))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
    return cols


def conv_forward(x, w, b, conv_param):
    """layers.conv_forward_naive (= fast_layers.conv_forward_strides): cross-correlation with zero
    padding, any H, W (floor division)."""
    stride, pad = conv_param["stride"], conv_param["pad"]
    out = np.einsum("ncijhw,fcij->nfhw", _cols(x, w.shape[2], w.shape[3], stride, pad), w, optimize=True)
    return out + b[None, :, None, None], (x.shape, w, conv_param)


def conv_backward(dout, cache):
    """dx of conv_forward (col2im by slicing). The parameter gradients are left out (None): no
    reference function uses them."""
    (n, c, h, w_), w, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    _, _, kh, kw = w.shape
    ho, wo = dout.shape[2:]
    dcols = np.einsum("nfhw,fcij->ncijhw", dout, w, optimize=True)
    dxp = np.zeros((n, c, h + 2 * pad, w_ + 2 * pad))
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += dcols[:, :, i, j]
    return dxp[:, :, pad:pad + h, pad:pad + w_], None, None


def batchnorm_forward(x, gamma, beta, bn_param):
    """layers.batchnorm_forward, mode 'test': running statistics, eps 1e-5. x: (N, D)."""
    std = np.sqrt(bn_param["running_var"] + bn_param.get("eps", EPS))
    xn = (x - bn_param["running_mean"]) / std
    return gamma * xn + beta, (gamma, std)


def batchnorm_backward(dout, cache):
    """layers.batchnorm_backward, mode 'test': dx = gamma * dout / std."""
    gamma, std = cache
    return gamma * dout / std, None, None


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """(N, C, H, W) -> (N*H*W, C), batchnorm, back."""
    n, c, h, w = x.shape
    out, cache = batchnorm_forward(x.transpose(0, 2, 3, 1).reshape(-1, c), gamma, beta, bn_param)
    return out.reshape(n, h, w, c).transpose(0, 3, 1, 2), cache


def spatial_batchnorm_backward(dout, cache):
    n, c, h, w = dout.shape
    dx, dgamma, dbeta = batchnorm_backward(dout.transpose(0, 2, 3, 1).reshape(-1, c), cache)
    return dx.reshape(n, h, w, c).transpose(0, 3, 1, 2), dgamma, dbeta


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, x):
    return dout * (x > 0)


def affine_forward(x, w, b):
    """x.reshape(N, -1).dot(w) + b, with w in torch's (out, in) layout (as random_weights and the
    loader store it; the original h5 may hold (in, out), which its loader transposes)."""
    return x.reshape(x.shape[0], -1) @ w.T + b, (x.shape, w)


def affine_backward(dout, cache):
    shape, w = cache
    return (dout @ w).reshape(shape), None, None


# --------------------------------------------------------------------------- PretrainedCNN


class PretrainedCNN:
    """cs231n/classifiers/pretrained_cnn.py in test mode: ``forward(X, start, end)`` (end inclusive)
    returns (out, cache), ``backward(dout, cache)`` returns (dX, grads); ``loss(X)`` the scores."""

    def __init__(self, params: dict[str, np.ndarray]):
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        self.margins: list[float] = []  # port: per forward pass, min |ReLU input / gamma| (calibrated_weights)
        self.conv_params = [{"stride": s, "pad": pad} for _, s, pad, _ in CONVS]
        self.bn_params = [{"mode": "test", "running_mean": self.params[f"running_mean{i}"],
                           "running_var": self.params[f"running_var{i}"]} for i in range(1, 11)]

    def forward(self, X, start=None, end=None, mode="test"):
        assert mode == "test", "the port has test mode only"
        X = np.asarray(X, dtype=np.float64)  # port: the original casts to float32
        if start is None:
            start = 0
        if end is None:
            end = len(self.conv_params) + 1
        p, layer_caches, prev, margin = self.params, [], X, np.inf
        for i in range(start, end + 1):
            i1 = i + 1
            if 0 <= i < len(self.conv_params):  # conv_bn_relu_forward
                a, conv_cache = conv_forward(prev, p[f"W{i1}"], p[f"b{i1}"], self.conv_params[i])
                an, bn_cache = spatial_batchnorm_forward(a, p[f"gamma{i1}"], p[f"beta{i1}"], self.bn_params[i])
                nxt, relu_cache = relu_forward(an)
                cache = (conv_cache, bn_cache, relu_cache)
                margin = min(margin, float((np.abs(an) / np.abs(p[f"gamma{i1}"])[:, None, None]).min()))
            elif i == len(self.conv_params):  # affine_bn_relu_forward
                a, fc_cache = affine_forward(prev, p[f"W{i1}"], p[f"b{i1}"])
                an, bn_cache = batchnorm_forward(a, p[f"gamma{i1}"], p[f"beta{i1}"], self.bn_params[i])
                nxt, relu_cache = relu_forward(an)
                cache = (fc_cache, bn_cache, relu_cache)
                margin = min(margin, float((np.abs(an) / np.abs(p[f"gamma{i1}"])).min()))
            elif i == len(self.conv_params) + 1:  # affine_forward: the scores
                nxt, cache = affine_forward(prev, p[f"W{i1}"], p[f"b{i1}"])
            else:
                raise ValueError(f"Invalid layer index {i}")
            layer_caches.append(cache)
            prev = nxt
        self.margins.append(margin)
        return prev, (start, end, layer_caches)

    def backward(self, dout, cache):
        start, end, layer_caches = cache
        dnext = dout
        for i in reversed(range(start, end + 1)):
            c = layer_caches.pop()  # as the original: a cache serves one backward pass
            if i == len(self.conv_params) + 1:
                dprev, _, _ = affine_backward(dnext, c)
            elif i == len(self.conv_params):
                fc_cache, bn_cache, relu_cache = c
                da, _, _ = batchnorm_backward(relu_backward(dnext, relu_cache), bn_cache)
                dprev, _, _ = affine_backward(da, fc_cache)
            else:
                conv_cache, bn_cache, relu_cache = c
                da, _, _ = spatial_batchnorm_backward(relu_backward(dnext, relu_cache), bn_cache)
                dprev, _, _ = conv_backward(da, conv_cache)
            dnext = dprev
        return dnext, {}  # port: no parameter gradients

    def loss(self, X, y=None):
        assert y is None, "the port has test mode only"
        return self.forward(X)[0]


def reference_forward(pixels, mean_image, params, end=10):
    """The CS231n PretrainedCNN test-mode forward, written with numpy only; output of layer ``end``."""
    X = np.asarray(pixels, dtype=np.float64) - np.asarray(mean_image, dtype=np.float64)
    return PretrainedCNN(params).forward(X, end=end)[0]


# --------------------------------------------------------------------------- image_utils


def blur_image(X):
    """image_utils.blur_image: per channel, [[1,2,1],[2,188,2],[1,2,1]] / 200, zero padding 1."""
    w_blur = np.zeros((3, 3, 3, 3))
    b_blur = np.zeros(3)
    blur_param = {"stride": 1, "pad": 1}
    for i in range(3):
        w_blur[i, i] = np.asarray([[1, 2, 1], [2, 188, 2], [1, 2, 1]], dtype=np.float32)
    w_blur /= 200.0
    return conv_forward(X, w_blur, b_blur, blur_param)[0]


# --------------------------------------------------------------------------- the reference functions


def count_clipped(X, low, high, clipped):
    """port: how many values the next clip changes, appended to ``clipped`` (a list, or None)."""
    if clipped is not None:
        clipped.append(int(np.sum((X < low) | (X > high))))


def compute_saliency_maps(X, y, model):
    N, C, H, W = X.shape
    saliency = np.zeros((N, H, W))

    # Compute the score by a single forward pass
    scores, cache = model.forward(X, mode="test")  # Score size (N,100)

    # The gradient of this loss wih respect to the input image
    dscores = np.zeros_like(scores)
    dscores[np.arange(N), y] = 1.0
    dX, grads = model.backward(dscores, cache)
    saliency += np.max(np.abs(dX), axis=1)

    return saliency


def make_fooling_image(X, target_y, model, lr=200.0, max_iterations=200):
    """port: ``lr`` was a local (200.0). The text tests ``i < 200`` but never increments ``i``; the
    port counts the iterations so that ``max_iterations`` bounds the loop as intended."""
    X_fooling = X.copy()
    N, C, H, W = X_fooling.shape  # N=1
    i = 0
    y_pred = -1
    trajectory = [X_fooling.copy()]  # port
    while (y_pred != target_y) & (i < max_iterations):
        scores, cache = model.forward(X_fooling, mode="test")  # Score size (N,100)
        dscores = np.zeros_like(scores)
        dscores[np.arange(N), target_y] = 1.0
        dX, grads = model.backward(dscores, cache)
        X_fooling += lr * dX
        y_pred = model.loss(X_fooling).argmax(axis=1)
        i += 1  # port
        trajectory.append(X_fooling.copy())  # port

    return X_fooling, trajectory


def create_class_visualization(target_y, model, mean_image, X_init, offsets, clipped=None, **kwargs):
    """port: ``X_init`` replaces ``np.random.randn(1, 3, 64, 64)``, ``offsets[t]`` = (ox, oy) the
    t-th ``np.random.randint(-max_jitter, max_jitter+1, 2)``; ``mean_image`` is ``data['mean_image']``."""
    learning_rate = kwargs.pop("learning_rate", 10000)
    blur_every = kwargs.pop("blur_every", 1)
    l2_reg = kwargs.pop("l2_reg", 1e-6)
    max_jitter = kwargs.pop("max_jitter", 4)
    num_iterations = kwargs.pop("num_iterations", 200)

    X = np.array(X_init, dtype=np.float64)  # port
    trajectory = [X.copy()]  # port
    for t in range(num_iterations):
        # As a regularizer, add random jitter to the image
        ox, oy = offsets[t]  # port
        assert -max_jitter <= ox <= max_jitter and -max_jitter <= oy <= max_jitter
        X = np.roll(np.roll(X, ox, -1), oy, -2)

        # Compute the score and gradient
        scores, cache = model.forward(X, mode="test")
        dscores = np.zeros_like(scores)
        dscores[0, target_y] = 1.0
        dX, grads = model.backward(dscores, cache)
        dX -= 2 * l2_reg * X

        X += learning_rate * dX

        # Undo the jitter
        X = np.roll(np.roll(X, -ox, -1), -oy, -2)

        # As a regularizer, clip the image
        count_clipped(X, -mean_image, 255.0 - mean_image, clipped)  # port
        X = np.clip(X, -mean_image, 255.0 - mean_image)

        # As a regularizer, periodically blur the image
        if t % blur_every == 0:
            X = blur_image(X)
        trajectory.append(X.copy())  # port

    return X, trajectory


def invert_features(target_feats, layer, model, mean_image, X_init, clipped=None, **kwargs):
    """port: ``X_init`` replaces ``np.random.randn(1, 3, 64, 64)``; returns X (the starter has no
    ``return``)."""
    learning_rate = kwargs.pop("learning_rate", 10000)
    num_iterations = kwargs.pop("num_iterations", 500)
    l2_reg = kwargs.pop("l2_reg", 1e-7)
    blur_every = kwargs.pop("blur_every", 1)

    X = np.array(X_init, dtype=np.float64)  # port
    trajectory = [X.copy()]  # port
    for t in range(num_iterations):
        # Forward until target layer
        feats, cache = model.forward(X, end=layer, mode="test")
        # Compute the loss
        loss = np.sum((feats - target_feats) ** 2) + l2_reg * np.sum(X ** 2)  # noqa: F841
        # Compute the gradient of the loss with respect to the activation
        dfeats = 2 * (feats - target_feats)
        dX, grads = model.backward(dfeats, cache)
        dX += 2 * l2_reg * X
        X -= learning_rate * dX
        # As a regularizer, clip the image
        count_clipped(X, -mean_image, 255.0 - mean_image, clipped)  # port
        X = np.clip(X, -mean_image, 255.0 - mean_image)
        # As a regularizer, periodically blur the image
        if (blur_every > 0) and t % blur_every == 0:
            X = blur_image(X)
        trajectory.append(X.copy())  # port

    return X, trajectory


def deepdream(X, layer, model, mean_image, offsets, clipped=None, **kwargs):
    """port: ``offsets[t]`` = (ox, oy) the t-th ``np.random.randint(-max_jitter, max_jitter+1, 2)``."""
    X = X.copy()
    learning_rate = kwargs.pop("learning_rate", 5.0)
    max_jitter = kwargs.pop("max_jitter", 16)
    num_iterations = kwargs.pop("num_iterations", 200)

    trajectory = [X.copy()]  # port
    for t in range(num_iterations):
        # As a regularizer, add random jitter to the image
        ox, oy = offsets[t]  # port
        assert -max_jitter <= ox <= max_jitter and -max_jitter <= oy <= max_jitter
        X = np.roll(np.roll(X, ox, -1), oy, -2)

        # Forward until dreaming layer
        fea, cache = model.forward(X, end=layer, mode="test")

        # Set the gradient equal to the feature
        dfea = fea
        dX, grads = model.backward(dfea, cache)
        X += learning_rate * dX

        # Undo the jitter
        X = np.roll(np.roll(X, -ox, -1), -oy, -2)

        # As a regularizer, clip the image
        mean_pixel = mean_image.mean(axis=(1, 2), keepdims=True)
        count_clipped(X, -mean_pixel, 255.0 - mean_pixel, clipped)  # port
        X = np.clip(X, -mean_pixel, 255.0 - mean_pixel)
        trajectory.append(X.copy())  # port

    return X, trajectory


def mean_pixel(mean_image: np.ndarray) -> np.ndarray:
    return np.asarray(mean_image, dtype=np.float64).mean(axis=(1, 2), keepdims=True)


def preprocess(pixels: np.ndarray, mean_image: np.ndarray, mean: str = "image") -> np.ndarray:
    """image_utils.preprocess_image for (N, 3, H, W) float pixels: minus the mean image or pixel."""
    m = np.asarray(mean_image, dtype=np.float64) if mean == "image" else mean_pixel(mean_image)
    return np.asarray(pixels, dtype=np.float64) - m


def state_dict(params: dict[str, np.ndarray], mean_image: np.ndarray) -> dict:
    """The h5 parameters under ``CS231nNet``'s state-dict keys (an independent mapping from the
    pipeline's loader), for ``load_state_dict``."""
    import torch

    state = {}
    for i in range(1, 11):
        block, lin = (f"conv{i}", "conv") if i <= 9 else ("fc10", "fc")
        for src, dst in ((f"W{i}", f"{block}.{lin}.weight"), (f"b{i}", f"{block}.{lin}.bias"),
                         (f"gamma{i}", f"{block}.bn.weight"), (f"beta{i}", f"{block}.bn.bias"),
                         (f"running_mean{i}", f"{block}.bn.running_mean"),
                         (f"running_var{i}", f"{block}.bn.running_var")):
            state[dst] = torch.from_numpy(np.ascontiguousarray(params[src], dtype=np.float32))
        state[f"{block}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    state["fc11.weight"] = torch.from_numpy(np.ascontiguousarray(params["W11"], dtype=np.float32))
    state["fc11.bias"] = torch.from_numpy(np.ascontiguousarray(params["b11"], dtype=np.float32))
    state["mean_image"] = torch.from_numpy(np.ascontiguousarray(mean_image, dtype=np.float32))
    return state

