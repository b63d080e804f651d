"""Orbit kernels: group actions on image batches and the NERO scores (reference sheet §2).

A group ``G`` sampled at elements ``g_1 .. g_n`` acts on images ``x`` of shape ``(B, C, H, W)``.
For every sample and element we record a score ``m(f(g x), y)`` (classification labels are
invariant, so ``g y = y``); the *individual* NERO plot of a sample is its score along the orbit
and the *aggregate* plot is the mean over samples (NERO, Sec. 3).

Exactness (NERO, Sec. 4.1): rotations by multiples of 90 degrees and flips are pixel
permutations and are applied as such (``torch.rot90`` / ``torch.flip``), so a model that is
exactly invariant under them gives an exactly flat plot at those elements. Every other element
is bilinear resampling with zero fill, done for many elements and samples in one
``grid_sample`` call: the samples ride in the channel axis and each element is one batch entry
with its own sampling grid.

Conventions (image rows grow downwards, as displayed):
- rotation by ``angle`` degrees is counter-clockwise on screen; ``angle = 90`` equals
  ``torch.rot90(x, 1, dims=(2, 3))``;
- shift ``(dx, dy)`` moves the content ``dx`` pixels right and ``dy`` pixels down;
- scale ``s`` zooms about the image centre (``s > 1`` enlarges);
- flip ``1`` mirrors left-right; in rotation x flip the mirror is applied first, then the rotation.

1-D signals ``(B, C, L)`` (time along the last axis) have groups of their own, named after the image
groups they mirror (:data:`SIGNAL_GROUPS`): ``time-shift`` moves the signal ``s`` samples later,
filling with zeros or wrapping around (``fill='circular'``); ``time-flip`` reverses time;
``time-scale`` resamples by ``s`` about the centre (``s > 1`` stretches, zero fill). Integer shifts and
the reversal are exact permutations; the rest is linear interpolation between neighbouring samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FILLS",
    "GROUPS",
    "IMAGE_GROUPS",
    "SIGNAL_GROUPS",
    "SCORES",
    "Elements",
    "consensus_scores",
    "count_elements",
    "elements",
    "label_scores",
    "transform",
    "transform_signals",
]

#: groups and the parameter columns each element carries
GROUPS: dict[str, tuple[str, ...]] = {
    "rotation": ("angle",),
    "shift": ("dx", "dy"),
    "scale": ("scale",),
    "flip": ("flip",),
    "rotation-flip": ("angle", "flip"),
    "time-shift": ("shift",),
    "time-flip": ("flip",),
    "time-scale": ("scale",),
}
#: groups acting on images (B, C, H, W) and on 1-D signals (B, C, L)
IMAGE_GROUPS: tuple[str, ...] = ("rotation", "shift", "scale", "flip", "rotation-flip")
SIGNAL_GROUPS: dict[str, str] = {"shift": "time-shift", "flip": "time-flip", "scale": "time-scale"}
#: how a shift of a signal fills the samples it uncovers
FILLS: tuple[str, ...] = ("zeros", "circular")

#: what one element of each group is, in words (slider and axis titles)
ELEMENT_TITLES: dict[str, str] = {
    "rotation": "Rotation angle",
    "shift": "Shift (dx, dy)",
    "scale": "Scale factor",
    "flip": "Flip",
    "rotation-flip": "Rotation angle, flip",
    "time-shift": "Time shift (samples)",
    "time-flip": "Time reversal",
    "time-scale": "Time scale factor",
}

#: score names: what ``score`` holds for each sample and element
SCORES: dict[str, str] = {
    "probability": "softmax probability of the true class (NERO's default)",
    "correct": "1 when the top-1 prediction is the true class, else 0",
    "margin": "logit of the true class minus the largest other logit",
    "consensus": "probability of the orbit's consensus class (no labels needed)",
}


@dataclass(frozen=True)
class Elements:
    """Sampled group elements: one row per element, one column per group parameter."""

    group: str
    params: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.params.values())))

    def columns(self) -> tuple[str, ...]:
        return GROUPS[self.group]

    def label(self, i: int) -> str:
        """Element ``i`` in the group's own units: a rotation in degrees (``'45°'``), a shift as
        (dx, dy) in pixels (``'(2, -1) px'``), a scale as its factor (``'×1.25'``), a flip by name
        (``'mirrored'``); rotation x flip as both (``'45°, mirrored'``). Signals: a time shift in
        samples (``'shift -2'``), a time scale as its factor, the reversal by name (``'reversed'``)."""
        p = {col: float(self.params[col][i]) for col in self.columns()}
        parts = []
        if "angle" in p:
            parts.append(f"{p['angle']:g}°")
        if "dx" in p:
            parts.append(f"({p['dx']:g}, {p['dy']:g}) px")
        if "shift" in p:
            parts.append(f"shift {p['shift']:g}")  # in samples: the group's title says so
        if "scale" in p:
            parts.append(f"×{p['scale']:g}")
        if "flip" in p and self.group == "time-flip":
            parts.append("reversed" if p["flip"] else "forward")
        elif "flip" in p:
            parts.append("mirrored" if p["flip"] else "upright")
        return ", ".join(parts)

    @property
    def title(self) -> str:
        """What an element of this group is, for a slider or an axis: ``'Rotation angle'``, ..."""
        return ELEMENT_TITLES[self.group]


def _grid_values(lo: float, hi: float, step: float) -> np.ndarray:
    n = int(math.floor((hi - lo) / step + 1e-9)) + 1
    return np.round(lo + step * np.arange(n), 10)


def count_elements(
    group: str,
    *,
    steps: int = 72,
    shift_range: float = 4.0,
    shift_step: float = 1.0,
    scale_range: tuple[float, float] = (0.5, 1.5),
    scale_step: float = 0.05,
) -> int:
    """How many elements :func:`elements` samples, counted without making them (exact integers,
    so absurd settings give absurd counts instead of overflowing). Ranges and steps must be finite
    and steps positive (``ValueError`` otherwise)."""
    if group in ("rotation", "rotation-flip"):
        return int(steps) * (2 if group == "rotation-flip" else 1)
    if group in ("flip", "time-flip"):
        return 2
    if group in ("shift", "time-shift"):
        lo, hi, step = -float(shift_range), float(shift_range), float(shift_step)
    elif group in ("scale", "time-scale"):
        lo, hi, step = float(scale_range[0]), float(scale_range[1]), float(scale_step)
    else:
        raise ValueError(f"unknown group {group!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(step)) or step <= 0 or hi < lo:
        raise ValueError(
            f"expected a finite range lo <= hi and a finite step > 0, got [{lo}, {hi}] by {step}"
        )
    n = math.floor((hi - lo) / step + 1e-9) + 1
    if group == "shift":
        return n * n
    if group == "time-shift":
        return n
    v = _grid_values(lo, hi, step) if n <= 10_000_000 else None  # is 1 on the grid? (only when affordable)
    return n + int(lo <= 1.0 <= hi and (v is None or not np.any(np.isclose(v, 1.0))))


def elements(
    group: str,
    *,
    steps: int = 72,
    shift_range: float = 4.0,
    shift_step: float = 1.0,
    scale_range: tuple[float, float] = (0.5, 1.5),
    scale_step: float = 0.05,
) -> Elements:
    """The sampled elements of ``group``.

    rotation: ``steps`` angles ``360 k / steps`` degrees, k = 0 .. steps-1 (starting at 0);
    shift: the grid ``dx, dy in [-shift_range, shift_range]`` with ``shift_step``;
    scale: ``[lo, hi]`` with ``scale_step`` (1 is always included);
    flip: upright and mirrored; rotation-flip: every angle, upright then mirrored;
    time-shift: ``s in [-shift_range, shift_range]`` samples with ``shift_step``; time-flip: forward and
    reversed; time-scale: as scale.
    """
    if group == "rotation":
        return Elements(group, {"angle": np.arange(steps) * (360.0 / steps)})
    if group == "rotation-flip":
        angles = np.arange(steps) * (360.0 / steps)
        return Elements(
            group, {"angle": np.tile(angles, 2), "flip": np.repeat(np.array([0, 1]), len(angles))}
        )
    if group == "shift":
        v = _grid_values(-shift_range, shift_range, shift_step)
        dy, dx = np.meshgrid(v, v, indexing="ij")
        return Elements(group, {"dx": dx.ravel(), "dy": dy.ravel()})
    if group == "time-shift":
        return Elements(group, {"shift": _grid_values(-shift_range, shift_range, shift_step)})
    if group in ("scale", "time-scale"):
        lo, hi = scale_range
        v = _grid_values(lo, hi, scale_step)
        if not np.any(np.isclose(v, 1.0)) and lo <= 1.0 <= hi:
            v = np.sort(np.append(v, 1.0))
        return Elements(group, {"scale": v})
    if group in ("flip", "time-flip"):
        return Elements(group, {"flip": np.array([0, 1])})
    raise ValueError(f"unknown group {group!r}")


# --------------------------------------------------------------------------- actions


def _quarter_turns(angle: float) -> int | None:
    """k when ``angle`` is k * 90 degrees (mod 360), else None."""
    k = angle / 90.0
    r = round(k)
    return r % 4 if abs(k - r) < 1e-9 else None


def _integer(v: float) -> int | None:
    r = round(v)
    return int(r) if abs(v - r) < 1e-9 else None


def _exact(group: str, p: dict[str, float], square: bool) -> bool:
    """Whether the element is a pixel permutation (or an integer shift) we apply exactly."""
    if "angle" in p:
        k = _quarter_turns(p["angle"])
        if k is None or (k % 2 == 1 and not square):
            return False
    if "scale" in p and abs(p["scale"] - 1.0) > 1e-12:
        return False
    if "dx" in p and (_integer(p["dx"]) is None or _integer(p["dy"]) is None):
        return False
    return True


def _shift_exact(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move the content by integer ``(dx, dy)`` pixels, zero fill (no wrap-around)."""
    H, W = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dx) >= W or abs(dy) >= H:
        return out
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def _apply_exact(x: torch.Tensor, p: dict[str, float]) -> torch.Tensor:
    if p.get("flip"):
        x = torch.flip(x, dims=(-1,))
    if "angle" in p:
        k = _quarter_turns(p["angle"])
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
    if "dx" in p:
        dx, dy = _integer(p["dx"]), _integer(p["dy"])
        if dx or dy:
            x = _shift_exact(x, dx, dy)
    return x.contiguous()


def _exact_mask(params: dict[str, np.ndarray], square: bool) -> np.ndarray:
    """:func:`_exact` for many elements at once: ``params`` maps each column to an array (R,)."""
    n = len(next(iter(params.values())))
    ok = np.ones(n, dtype=bool)
    if "angle" in params:
        k = np.asarray(params["angle"], dtype=np.float64) / 90.0
        r = np.round(k)
        ok &= np.abs(k - r) < 1e-9
        if not square:
            ok &= np.mod(r, 2) == 0
    if "scale" in params:
        ok &= np.abs(np.asarray(params["scale"], dtype=np.float64) - 1.0) <= 1e-12
    for col in ("dx", "dy"):
        if col in params:
            v = np.asarray(params[col], dtype=np.float64)
            ok &= np.abs(v - np.round(v)) < 1e-9
    return ok


def _inverse_maps(params: dict[str, np.ndarray], H: int, W: int, dtype, device) -> torch.Tensor:
    """For each of R elements and each output pixel, the input location it samples: ``(R, H, W, 2)``
    grid_sample coordinates (``params`` maps each group column to an array (R,)).

    Works in pixel units about the image centre (so non-square images rotate without shear),
    then converts to ``align_corners=False`` normalised coordinates, where pixel j sits at
    ``(2 j + 1) / W - 1``. All elements in a few tensor operations, not a loop.
    """

    def col(name: str) -> torch.Tensor:
        return torch.as_tensor(np.asarray(params[name], dtype=np.float64), device=device).to(dtype)[
            :, None, None
        ]

    ys = torch.arange(H, dtype=dtype, device=device) - (H - 1) / 2
    xs = torch.arange(W, dtype=dtype, device=device) - (W - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    u, v = xx[None], yy[None]  # output location; undo the operations in reverse order
    if "dx" in params:
        u, v = u - col("dx"), v - col("dy")
    if "scale" in params:
        u, v = u / col("scale"), v / col("scale")
    if "angle" in params:
        # screen-CCW rotation by t maps (u, v) -> (u cos t + v sin t, -u sin t + v cos t) (v down);
        # its inverse is the rotation by -t
        t = np.radians(np.asarray(params["angle"], dtype=np.float64))
        c = torch.as_tensor(np.cos(t), device=device).to(dtype)[:, None, None]
        s = torch.as_tensor(np.sin(t), device=device).to(dtype)[:, None, None]
        u, v = u * c - v * s, u * s + v * c
    if "flip" in params:
        u = torch.where(col("flip") != 0, -u, u)
    n = len(next(iter(params.values())))
    u, v = u.expand(n, H, W), v.expand(n, H, W)
    return torch.stack(((2 * (u + (W - 1) / 2) + 1) / W - 1, (2 * (v + (H - 1) / 2) + 1) / H - 1), dim=-1)


def _inverse_map(p: dict[str, float], H: int, W: int, dtype, device) -> torch.Tensor:
    """:func:`_inverse_maps` of one element ``p``: ``(H, W, 2)``."""
    return _inverse_maps({k: np.array([v]) for k, v in p.items()}, H, W, dtype, device)[0]


def _signal_positions(params: dict[str, np.ndarray], L: int, dtype, device) -> torch.Tensor:
    """For each of R elements and each output sample, the input position it reads: ``(R, L)``."""

    def col(name: str) -> torch.Tensor:
        return torch.as_tensor(np.asarray(params[name], dtype=np.float64), device=device)[:, None]

    n = len(next(iter(params.values())))
    t = torch.arange(L, dtype=torch.float64, device=device)[None].expand(n, L)
    c = (L - 1) / 2
    if "shift" in params:
        t = t - col("shift")
    if "scale" in params:
        t = c + (t - c) / col("scale")
    if "flip" in params:
        t = torch.where(col("flip") != 0, (L - 1) - t, t)
    return t


def transform_signals(
    x: torch.Tensor, els: Elements, which: list[int] | None = None, fill: str = "zeros"
) -> torch.Tensor:
    """Signals ``x`` ``(B, C, L)`` under the chosen elements of a ``time-*`` group: ``(len(which), B,
    C, L)``. Each output sample reads the input at its position (:func:`_signal_positions`), linearly
    interpolated between the two neighbouring samples; positions outside the signal read 0, or wrap
    around with ``fill='circular'``. Integer positions (shifts by whole samples, the reversal) copy
    samples exactly."""
    if x.ndim != 3:
        raise ValueError(f"expected signals (B, C, L), got shape {tuple(x.shape)}")
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; expected one of {', '.join(FILLS)}")
    B, C, L = x.shape
    which = np.arange(len(els)) if which is None else np.asarray(list(which), dtype=np.int64)
    params = {k: np.asarray(v)[which] for k, v in els.params.items()}
    if not len(which):
        return x.new_empty((0, B, C, L))
    pos = _signal_positions(params, L, x.dtype, x.device)
    lo = torch.floor(pos)
    w = (pos - lo).to(x.dtype)
    i0 = lo.to(torch.int64)
    flat = x.reshape(B * C, L)
    parts = []
    for idx, weight in ((i0, 1 - w), (i0 + 1, w)):
        if fill == "circular":
            vals = flat[:, idx.remainder(L)]
        else:
            inside = ((idx >= 0) & (idx < L)).to(x.dtype)
            vals = flat[:, idx.clamp(0, L - 1)] * inside
        parts.append(vals * weight)  # (B*C, R, L)
    exact = w == 0  # whole-sample positions: the sample itself, untouched by the interpolation
    out = torch.where(exact, parts[0], parts[0] + parts[1])
    return out.reshape(B, C, len(which), L).permute(2, 0, 1, 3).contiguous()


def transform(
    x: torch.Tensor, els: Elements, which: list[int] | None = None, fill: str = "zeros"
) -> torch.Tensor:
    """All samples under the chosen elements: ``(len(which), B, C, H, W)`` from ``x`` ``(B, C, H, W)``
    (``(len(which), B, C, L)`` from signals ``(B, C, L)`` under a ``time-*`` group, see
    :func:`transform_signals`; ``fill`` is theirs).

    Exact elements are permutations of pixels; the others are resampled bilinearly in one
    ``grid_sample`` call whose batch axis runs over elements and whose channel axis holds every
    sample's channels (their sampling grids made together, :func:`_inverse_maps`).
    """
    if els.group.startswith("time-"):
        return transform_signals(x, els, which, fill)
    if x.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    which = np.arange(len(els)) if which is None else np.asarray(list(which), dtype=np.int64)
    out = x.new_empty((len(which), B, C, H, W))
    params = {k: np.asarray(v)[which] for k, v in els.params.items()}
    exact = _exact_mask(params, H == W) if len(which) else np.zeros(0, dtype=bool)
    slots = np.flatnonzero(exact)
    cols = {k: v[slots].astype(np.float64).tolist() for k, v in params.items()}
    for j, slot in enumerate(slots.tolist()):
        out[slot] = _apply_exact(x, {k: v[j] for k, v in cols.items()})
    resample = np.flatnonzero(~exact)
    if len(resample):
        grid = _inverse_maps({k: v[resample] for k, v in params.items()}, H, W, x.dtype, x.device)
        src = x.reshape(1, B * C, H, W).expand(len(resample), B * C, H, W)
        moved = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[torch.as_tensor(resample, device=x.device)] = moved.reshape(len(resample), B, C, H, W)
    return out


# --------------------------------------------------------------------------- scores


def label_scores(logits: torch.Tensor, labels: torch.Tensor, score: str) -> torch.Tensor:
    """Per-row score against the labels: ``probability``, ``correct`` or ``margin`` (see SCORES).

    ``logits`` ``(R, K)``, ``labels`` ``(R,)``.
    """
    idx = labels.long().unsqueeze(1)
    if score == "probability":
        return torch.softmax(logits.float(), dim=1).gather(1, idx).squeeze(1)
    if score == "correct":
        return (logits.argmax(dim=1) == labels).float()
    if score == "margin":
        true = logits.gather(1, idx).squeeze(1)
        others = logits.scatter(1, idx, float("-inf"))
        return (true - others.max(dim=1).values).float()
    raise ValueError(f"unknown score {score!r}")


def consensus_scores(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Consensus scoring along each orbit (NERO, Sec. 3.3).

    ``probs`` ``(E, B, K)``: the class probabilities of every sample at every element, already in
    the original frame (class labels are invariant). The orbit average ``mean_g p_g`` names a
    consensus class per sample; each element is scored by the probability it gives that class.
    Returns ``(scores (E, B), consensus class (B,))``.
    """
    consensus = probs.mean(dim=0).argmax(dim=1)
    idx = consensus.view(1, -1, 1).expand(probs.shape[0], -1, 1)
    return probs.gather(2, idx).squeeze(2), consensus
