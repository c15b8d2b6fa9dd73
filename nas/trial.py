"""What strategies propose (Candidate) and what training returns (Evaluation).

Both are plain JSON-serialisable records, so they travel through Prefect's JSON result
store and the MLflow lineage store unchanged, and strategies never need torch or MLflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nas.space.architecture import Architecture, HParams, digest

# Bump when fit() changes what it computes: cached results of the old version stop matching.
TRAINING_VERSION = "1"

OK = "ok"
FAILED = "failed"


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

    def trial_key(self, data_fingerprint: str, seed: int) -> str:
        """Everything that decides the training result, hashed: equal keys train identically."""
        decisive = {
            "graph": self.arch.to_json(),
            "hparams": self.hparams.to_json(),
            "budget": self.budget.to_json(),
            "inherit_from": self.inherit_from,
            "data": data_fingerprint,
            "seed": seed,
            "version": TRAINING_VERSION,
        }
        if self.resume_from:  # only when set, so keys of ordinary trials keep their values
            decisive["resume_from"] = self.resume_from
        return digest(decisive)

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
        )


@dataclass
class Evaluation:
    """The outcome of training one candidate. A failure is a result too, with a reason."""

    candidate: Candidate
    trial_key: str
    status: str = OK
    reason: str | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    train_loss: list[float] = field(default_factory=list)  # per epoch
    val_accs: list[float] = field(default_factory=list)  # per epoch
    params: int = 0
    flops: int = 0
    seconds: float = 0.0
    epochs_trained: int = 0
    resumed_at: int = 0  # epochs a resumed run had already trained: it spent epochs_trained - resumed_at
    device: str = "cpu"
    inherited: list[str] = field(default_factory=list)  # state-dict keys taken from a parent's weights
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def score(self) -> float:
        """What strategies maximise: validation accuracy, with failures ranked below everything."""
        return self.val_acc if self.ok and self.val_acc is not None else -1.0

    @property
    def arch_id(self) -> str:
        return self.candidate.arch.arch_id

    def to_json(self) -> dict[str, Any]:
        # Every field, in declaration order, so a new field can never be left out.
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "candidate": self.candidate.to_json()}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Evaluation:
        fields_ = dict(data)
        fields_["candidate"] = Candidate.from_json(data["candidate"])
        return Evaluation(**fields_)
