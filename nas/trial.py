"""What strategies propose (Candidate) and what training returns (Evaluation).

Both are plain JSON-serialisable records, so they travel through Prefect's JSON result
store and the MLflow lineage store unchanged, and strategies never need torch or MLflow.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

from nas.ids import derive_seed, digest
from nas.space.architecture import Architecture, HParams
from nas.space.cell import CELL_MEMORY

# Bump when fit() changes what it computes: cached results of the old version stop matching.
# 3: recurrent networks clip their gradient norm.
TRAINING_VERSION = "3"


class TrialStatus(str, Enum):
    """How a trial ended (or that it has not yet), as stored in the tag `nas.status`."""

    OK = "ok"
    FAILED = "failed"  # decided by the trial itself (invalid network, over the limit, diverged): remembered
    ERROR = "error"  # the environment failed it (out of memory, time limit, a crash): retried on a rerun
    RUNNING = "running"
    ABANDONED = "abandoned"  # its owner died mid-way; the run was deleted and the trial taken over

    def __str__(self) -> str:
        return self.value


class TrialInterrupted(RuntimeError):
    """The environment stopped a trial (time limit, out of memory): not a result to cache."""


@dataclass(frozen=True)
class TrialSetting:
    """What a search fixes for all its trials and that decides their results."""

    data_fingerprint: str
    seed: int = 0
    device: str = "cpu"  # the device type: "cpu" or "cuda"
    max_params: int | None = None
    folds: int = 1  # 1: scored on the val split; K > 1: stratified K-fold over train+val, scored by the mean

    @property
    def precision(self) -> str:
        return "bf16" if self.device == "cuda" else "fp32"  # nas.train's autocast policy


@dataclass(frozen=True)
class Budget:
    epochs: int
    max_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Budget:
        return Budget(int(data["epochs"]), data.get("max_seconds"))


@dataclass(frozen=True, eq=False)
class Candidate:
    """One proposal: what to train, for how long, and where it came from."""

    arch: Architecture
    hparams: HParams
    budget: Budget
    parents: tuple[str, ...] = ()  # lineage run ids of the parents
    inherit_from: str | None = None  # run whose weights initialise this one
    resume_from: str | None = None  # shorter run of the same network that this one continues
    generation: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # strategy notes, e.g. {"mutation": ...}
    nonce: int | None = None  # set by a strategy that proposes the same training twice on purpose

    def trial_seed(self, setting: TrialSetting) -> int:
        """This trial's own training seed: init, dropout and shuffling derive from it.

        It leaves out the budget, so a longer run of the same network starts exactly as the
        shorter one did, and a promotion that continues a checkpoint matches a run trained
        straight through. It leaves out the run it inherits from too: run ids differ from store
        to store, and a child seeded by one would train differently in the same search on a
        fresh store (the inherited weights, which the key does name, set it apart already).
        """
        # "inherit_from" stays in the digest as None, so that every other trial keeps the seed it had.
        return derive_seed(setting.seed, digest({"graph": self.arch.to_json(), "hparams": self.hparams.to_json(),
                                                 "inherit_from": None, "nonce": self.nonce}))

    def trial_key(self, setting: TrialSetting) -> str:
        """Everything that decides the training result, hashed, and nothing else: equal keys train identically.

        Parents and strategy notes are lineage, not inputs, so two methods proposing the
        same training share its result.
        """
        # Folds join the key only when cross-validating, and the cells' semantics only for a network with
        # a cell, so that other keys stay those of earlier versions.
        folds = {"folds": setting.folds} if setting.folds > 1 else {}
        cells = {"cell_memory": CELL_MEMORY} if any(node.op == "cell" for node in self.arch.nodes) else {}
        return digest({
            "graph": self.arch.to_json(),
            "hparams": self.hparams.to_json(),
            "budget": self.budget.to_json(),
            "inherit_from": self.inherit_from,
            "resume_from": self.resume_from,
            "nonce": self.nonce,
            "data": setting.data_fingerprint,
            "seed": self.trial_seed(setting),
            "device": setting.device,
            "precision": setting.precision,
            "max_params": setting.max_params,
            "version": TRAINING_VERSION,
            **folds,
            **cells,
        })

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch.to_json(),
            "hparams": self.hparams.to_json(),
            "budget": self.budget.to_json(),
            "parents": list(self.parents),
            "inherit_from": self.inherit_from,
            "resume_from": self.resume_from,
            "generation": self.generation,
            "info": self.info,
            "nonce": self.nonce,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Candidate:
        return Candidate(
            arch=Architecture.from_json(data["arch"]),
            hparams=HParams.from_json(data["hparams"]),
            budget=Budget.from_json(data["budget"]),
            parents=tuple(data.get("parents", ())),
            inherit_from=data.get("inherit_from"),
            resume_from=data.get("resume_from"),
            generation=int(data.get("generation", 0)),
            info=dict(data.get("info", {})),
            nonce=data.get("nonce"),
        )


@dataclass
class Evaluation:
    """The outcome of training one candidate. A failure is a result too, with a reason."""

    candidate: Candidate
    trial_key: str
    status: TrialStatus = TrialStatus.OK
    reason: str | None = None
    val_acc: float | None = None  # cross-validated: the mean over folds, as are the other scores and curves
    val_loss: float | None = None  # breaks val_acc ties (see rank_key)
    test_acc: float | None = None
    train_loss: list[float] = field(default_factory=list)  # per epoch
    val_accs: list[float] = field(default_factory=list)  # per epoch
    fold_val_accs: list[float] = field(default_factory=list)  # per fold, when cross-validated
    fold_val_losses: list[float] = field(default_factory=list)
    params: int = 0
    flops: int = 0
    seconds: float = 0.0
    epochs_trained: int = 0
    resumed_at: int = 0  # epochs a resumed run had already trained: it spent epochs_trained - resumed_at
    device: str = "cpu"
    inherited: list[str] = field(default_factory=list)  # state-dict keys taken from a parent's weights
    run_id: str | None = None

    def __post_init__(self) -> None:
        self.status = TrialStatus(self.status)  # a plain "ok" from JSON or a caller becomes the enum

    @property
    def ok(self) -> bool:
        return self.status == TrialStatus.OK

    @property
    def retryable(self) -> bool:
        """A failure of the environment, not of the network: a rerun trains it again."""
        return self.status == TrialStatus.ERROR

    @property
    def score(self) -> float:
        """What strategies maximise: validation accuracy, with failures ranked below everything."""
        return self.val_acc if self.ok and self.val_acc is not None else -1.0

    @property
    def rank_key(self) -> tuple[float, float]:
        """What choosing the best maximises: the score, then the lower validation loss.

        Small validation sets leave many networks at the same accuracy (often 1.0); the
        loss still tells the confident ones from the lucky ones.
        """
        return self.score, -(self.val_loss if self.val_loss is not None else math.inf)

    @property
    def standard_error(self) -> float:
        """The standard error of a cross-validated score (its folds' spread); 0 for a hold-out score."""
        folds = self.fold_val_accs
        return statistics.stdev(folds) / math.sqrt(len(folds)) if len(folds) > 1 else 0.0

    def curves(self) -> list[tuple[str, int, float]]:
        """Every per-step metric as (name, step, value): per epoch (step = epoch - 1) and per fold."""
        series = {"train_loss": self.train_loss, "val_acc": self.val_accs, "fold_val_acc": self.fold_val_accs,
                  "fold_val_loss": self.fold_val_losses}
        return [(name, step, value) for name, values in series.items() for step, value in enumerate(values)]

    @property
    def arch_id(self) -> str:
        return self.candidate.arch.arch_id

    def to_json(self) -> dict[str, Any]:
        # Every field, in declaration order, so a new field can never be left out.
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "candidate": self.candidate.to_json(),
                "status": self.status.value}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Evaluation:
        fields_ = dict(data)
        fields_["candidate"] = Candidate.from_json(data["candidate"])
        return Evaluation(**fields_)


def ranked(evaluations: list[Evaluation]) -> list[Evaluation]:
    """The successful evaluations, best first, by the one-standard-error rule.

    Scores within one standard error of the best are indistinguishable (cross-validated,
    that spread is the folds'); among them the lower mean validation loss ranks first, as
    the better-calibrated network. On a hold-out score (no spread) this is `rank_key`:
    accuracy, then loss. Full ties keep the given order.
    """
    done = [e for e in evaluations if e.ok]
    if not done:
        return []
    top = max(done, key=lambda e: e.rank_key)
    bar = top.score - top.standard_error

    def key(e: Evaluation) -> tuple[bool, float, float]:
        level = e.score >= bar
        return level, e.rank_key[1] if level else e.score, e.rank_key[1]

    return sorted(done, key=key, reverse=True)
