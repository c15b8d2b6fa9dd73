"""A performance predictor: an ensemble of small MLPs from a network's encoding to its accuracy.

BANANAS (White et al. 2021) showed that a plain ensemble of feed-forward networks on a
fixed-length encoding of the architecture predicts accuracy well enough to steer a search,
and that the spread of the members' predictions is a usable uncertainty for Thompson
sampling. Here the input is `SearchSpace.encode(arch, hparams)` (a vector in [0, 1]), each
member is a two-hidden-layer ReLU MLP, and members differ only by their initial weights,
as in the paper: where the data pin a prediction down they agree, away from it they part.

All members train at once as one batched network (full-batch Adam on standardised
targets), so fitting a few hundred results takes a fraction of a second on a CPU. Fitting
is deterministic given its seed and never touches torch's or numpy's global RNG.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((60, 8))
    >>> y = x @ np.arange(8.0)
    >>> predictor = Predictor.fit(x[:40], y[:40], seed=0)
    >>> mean, std = predictor.predict(x[40:])
    >>> kendall_tau(mean, y[40:]) > 0.8, bool((std >= 0).all())
    (True, True)
    >>> again = Predictor.from_bytes(predictor.to_bytes())
    >>> bool((again.predict(x[40:])[0] == mean).all())
    True
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import torch

from nas.threads import using_threads

__all__ = ["Predictor", "held_out_tau", "kendall_tau"]

FORMAT = "nas.predictor/1"  # the JSON header's name and version, so a reader can refuse other files
HEADER_KEY = "nas.predictor"  # where the header lives in the safetensors metadata
LAYERS = ("w1", "b1", "w2", "b2", "w3", "b3")


@dataclass(frozen=True)
class Predictor:
    """A fitted ensemble: stacked member weights plus the target standardisation.

    `weights` holds each layer of all members stacked on a first axis of length `members`
    (w1: members x inputs x hidden, ...), so prediction is three batched matrix products.
    """

    weights: dict[str, torch.Tensor]
    y_mean: float
    y_std: float

    @property
    def members(self) -> int:
        return int(self.weights["w1"].shape[0])

    @property
    def inputs(self) -> int:
        return int(self.weights["w1"].shape[1])

    # ---- fitting -------------------------------------------------------------------

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, seed: int = 0, members: int = 5, hidden: int = 64,
            steps: int = 300, lr: float = 0.01, weight_decay: float = 1e-4) -> Predictor:
        """An ensemble of `members` MLPs fitted to predict y (n) from x (n x inputs).

        Targets are standardised so one learning rate suits accuracies, losses or any
        scale; the predictions come back in y's units. A little weight decay keeps the
        members from interpolating a few dozen noisy points wildly.
        """
        x, y = _check_xy(x, y)
        if members < 1 or hidden < 1 or steps < 0:
            raise ValueError(f"members={members}, hidden={hidden} and steps={steps} must be positive "
                             "(the defaults 5, 64 and 300 fit a few hundred points in well under a second).")
        y_mean = float(y.mean())
        spread = float(y.std())
        # Equal targets teach nothing but their value: predict it, with unit scale to avoid 0/0.
        y_std = spread if spread > 1e-12 else 1.0
        generator = torch.Generator().manual_seed(int(seed) % 2**63)
        weights = _init(generator, members, x.shape[1], hidden)
        inputs = torch.as_tensor(x, dtype=torch.float32)
        targets = torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32)
        optimiser = torch.optim.Adam(list(weights.values()), lr=lr, weight_decay=weight_decay)
        # One thread: these matrices are tiny, and on a loaded machine (trials training beside the
        # search) intra-op threads spin-wait each other, measured 50-100x slower.
        with torch.enable_grad(), using_threads(1):
            for _ in range(steps):
                optimiser.zero_grad()
                # Summed over members: each member's gradient is its own mean squared error's.
                loss = ((_forward(weights, inputs) - targets) ** 2).mean(dim=1).sum()
                loss.backward()
                optimiser.step()
        return cls({k: v.detach().clone() for k, v in weights.items()}, y_mean, y_std)

    # ---- predicting ----------------------------------------------------------------

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over the members at each row of x, in the targets' units.

        The standard deviation is the members' sample spread (0 with a single member).
        """
        x = _as_matrix(x, "x")
        if x.shape[1] != self.inputs:
            raise ValueError(f"x has {x.shape[1]} columns but the predictor was fitted on {self.inputs}: "
                             "encode candidates with the same (bound) search space it was fitted on.")
        with torch.no_grad(), using_threads(1):
            out = _forward(self.weights, torch.as_tensor(x, dtype=torch.float32)).double().numpy()
        mean = self.y_mean + self.y_std * out.mean(axis=0)
        std = self.y_std * out.std(axis=0, ddof=1) if self.members > 1 else np.zeros(len(x))
        return mean, std

    # ---- storing -------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """A safetensors file: the stacked weights, and a JSON header (format, scale) in its metadata.

        No pickle: loading a predictor from the lineage store can never run code.
        """
        from safetensors.torch import save

        header = {"format": FORMAT, "y_mean": self.y_mean, "y_std": self.y_std,
                  "members": self.members, "inputs": self.inputs}
        tensors = {k: v.contiguous() for k, v in self.weights.items()}
        return save(tensors, metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Predictor:
        """The predictor `to_bytes` wrote; ValueError for anything else."""
        from safetensors.torch import load

        header = _header(data)
        try:
            weights = load(data)
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"the predictor's weights cannot be read ({exc}): the file is damaged.") from None
        if sorted(weights) != sorted(LAYERS) or weights["w1"].shape[:2] != (header["members"], header["inputs"]):
            raise ValueError(f"the predictor file holds tensors {sorted(weights)} that do not match its header "
                             f"{header}: it was not written by Predictor.to_bytes.")
        return cls(weights, float(header["y_mean"]), float(header["y_std"]))


def kendall_tau(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Kendall's rank correlation of two equally long sequences: what a search needs from a
    predictor is the order of candidates, not their values. 0.0 when either is constant
    (no order to agree on), where scipy would say NaN."""
    from scipy.stats import kendalltau

    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"kendall_tau needs two sequences of the same length, at least 2; got {len(a)} and "
                         f"{len(b)}.")
    tau = kendalltau(a, b).statistic
    return 0.0 if np.isnan(tau) else float(tau)


def held_out_tau(x: np.ndarray, y: np.ndarray, seed: int = 0, test_fraction: float = 0.3,
                 members: int = 5) -> float:
    """Kendall's tau on a held-out `test_fraction` of the data of a predictor fitted on the rest.

    The split is a seeded permutation, so the number is reproducible; it says how well
    the predictor would rank networks it has not seen.
    """
    x, y = _check_xy(x, y)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be between 0 and 1 (0.3 holds out 30%).")
    n_test = int(round(len(y) * test_fraction))
    if n_test < 2 or len(y) - n_test < 2:
        raise ValueError(f"{len(y)} results split at test_fraction={test_fraction} leave {len(y) - n_test} to fit "
                         f"and {n_test} to test; both need at least 2: give more results.")
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    predictor = Predictor.fit(x[train], y[train], seed=seed, members=members)
    return kendall_tau(predictor.predict(x[test])[0], y[test])


# ---- helpers ---------------------------------------------------------------------


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D array, one encoded network per row; got shape {x.shape} "
                         "(stack space.encode(arch, hparams) vectors with np.array([...])).")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values; encodings from space.encode are always finite, "
                         "so check where these rows came from.")
    return x


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _as_matrix(x, "x")
    y = np.asarray(y, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array of scores, one per row of x; got shape {y.shape}.")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)} scores: give one score per encoded network.")
    if len(y) < 2:
        raise ValueError(f"a predictor needs at least 2 results to fit, got {len(y)}; wait for more results.")
    if not np.isfinite(y).all():
        raise ValueError(f"y holds {int((~np.isfinite(y)).sum())} NaN or infinite scores: leave failed trials out "
                         "or give them a finite score (e.g. the worst accuracy seen).")
    return x, y


def _init(generator: torch.Generator, members: int, inputs: int, hidden: int) -> dict[str, torch.Tensor]:
    """torch.nn.Linear's default initialisation, U(+-1/sqrt(fan_in)), drawn from `generator` alone."""
    shapes = {"w1": (inputs, hidden), "b1": (1, hidden), "w2": (hidden, hidden), "b2": (1, hidden),
              "w3": (hidden, 1), "b3": (1, 1)}
    fan_in = {"w1": inputs, "b1": inputs, "w2": hidden, "b2": hidden, "w3": hidden, "b3": hidden}
    weights = {}
    for name in LAYERS:
        bound = fan_in[name] ** -0.5
        weights[name] = ((torch.rand((members, *shapes[name]), generator=generator) * 2 - 1) * bound
                         ).requires_grad_()
    return weights


def _forward(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Every member's prediction at every row of x: members x rows."""
    h = torch.relu(torch.matmul(x, weights["w1"]) + weights["b1"])  # x broadcasts over members
    h = torch.relu(torch.bmm(h, weights["w2"]) + weights["b2"])
    return (torch.bmm(h, weights["w3"]) + weights["b3"]).squeeze(-1)


def _header(data: bytes) -> dict:
    """The JSON header in a safetensors file's metadata (the format: 8-byte length, then JSON)."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(json.loads(data[8:8 + length])["__metadata__"][HEADER_KEY])
        if header.get("format") != FORMAT:
            raise ValueError(header.get("format"))
        return header
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"these bytes are not a predictor written by Predictor.to_bytes (format {FORMAT}): "
                         f"{type(exc).__name__} {exc}.") from None
