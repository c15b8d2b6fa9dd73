"""Attribute domains: the allowed values of one attribute, and how to sample, grid and encode them.

A space file writes a domain as a list of choices (`[8, 16, 32]`) or as a rule over a
range: `{odd: [1, 7]}`, `{pow2: [1, 4]}`, `{int: [1, 10]}` or `{log: [1.0e-4, 1.0e-1]}`.
Rules matter for mutation: "alter the kernel size" stays odd, "alter the stride" stays a
power of two, whatever values a space lists.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from nas.space.architecture import AttrValue

RULES = ("odd", "pow2", "int", "log")


class SpaceError(ValueError):
    """A malformed search-space file."""


def _same_value(a: AttrValue, b: AttrValue) -> bool:
    # YAML gives True == 1 == 1.0; a domain of booleans must not accept the integer 1.
    return type(a) is type(b) and a == b or (
        type(a) in (int, float) and type(b) in (int, float) and a == b)


@dataclass(frozen=True)
class Domain:
    choices: tuple[AttrValue, ...] = ()
    rule: str | None = None
    low: float = 0
    high: float = 0
    grid_points: int = 4  # how many values a grid takes from a log range

    @staticmethod
    def parse(raw: Any, where: str) -> Domain:
        if isinstance(raw, list):
            if not raw or not all(isinstance(v, (bool, int, float, str)) for v in raw):
                raise SpaceError(f"{where}: a list of choices must be non-empty and hold only "
                                 f"numbers, strings or booleans, got {raw!r}.")
            return Domain(choices=tuple(raw))
        if isinstance(raw, (bool, int, float, str)):
            return Domain(choices=(raw,))
        if isinstance(raw, dict) and len(raw) in (1, 2) and set(raw) - {"grid"} <= set(RULES):
            (rule,) = set(raw) - {"grid"}
            bounds = raw[rule]
            if (not isinstance(bounds, list) or len(bounds) != 2
                    or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                    or bounds[0] > bounds[1]):
                raise SpaceError(f"{where}: '{rule}' takes [low, high] with low <= high, got {bounds!r}.")
            low, high = bounds
            if rule == "log" and low <= 0:
                raise SpaceError(f"{where}: a log range needs low > 0, got {low}.")
            domain = Domain(rule=rule, low=low, high=high, grid_points=int(raw.get("grid", 4)))
            if rule != "log" and not domain.values():
                raise SpaceError(f"{where}: no {rule} value lies in [{low}, {high}].")
            return domain
        raise SpaceError(f"{where}: a domain is a list of choices or one of "
                         f"{{odd|pow2|int|log: [low, high]}}, got {raw!r}.")

    def values(self) -> list[AttrValue]:
        """Every allowed value in order (a log range gives its grid points)."""
        if self.rule is None:
            return list(self.choices)
        if self.rule == "log":
            if self.grid_points <= 1 or self.low == self.high:
                return [float(self.low)]
            ratio = (self.high / self.low) ** (1 / (self.grid_points - 1))
            return [float(f"{self.low * ratio**i:.6g}") for i in range(self.grid_points)]
        low, high = math.ceil(self.low), math.floor(self.high)
        if self.rule == "int":
            return list(range(low, high + 1))
        if self.rule == "odd":
            return [v for v in range(low, high + 1) if v % 2 == 1]
        return [2**k for k in range(0, 31) if low <= 2**k <= high]

    def nearest(self, value: AttrValue) -> AttrValue:
        """The value of `values()` closest to `value` (on a log scale for a log range), e.g. to
        write a continuous sample with a finite vocabulary; a value not comparable stays as it is."""
        numbers = [v for v in self.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if self.contains(value) and self.rule != "log" or not numbers or isinstance(value, (bool, str)):
            return value
        scale = math.log if self.rule == "log" and value > 0 else float
        return min(numbers, key=lambda v: abs(scale(v) - scale(value)))

    def contains(self, value: AttrValue) -> bool:
        if self.rule is None:
            return any(_same_value(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.rule == "log":
            return self.low <= value <= self.high
        return float(value).is_integer() and int(value) in self.values()

    def sample(self, rng: random.Random) -> AttrValue:
        if self.rule == "log":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
            return float(f"{value:.4g}")  # short, readable, and stable in JSON
        return rng.choice(self.values())

    def encode(self, value: AttrValue) -> float:
        """Position of a value in [0, 1], for the fixed-length vector encoding."""
        if self.rule == "log":
            if self.high == self.low:
                return 0.0
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        values = self.values()
        index = next((i for i, v in enumerate(values) if _same_value(v, value)), 0)
        return index / (len(values) - 1) if len(values) > 1 else 0.0

    def parse_token(self, text: str) -> AttrValue:
        """The value a token's text names, typed like the domain's values."""
        if self.rule == "log":
            return float(text)
        for v in self.values():
            if token_text(v) == text:
                return v
        if self.rule is not None:
            return int(text)
        raise ValueError(f"'{text}' is not one of {self.describe()}")

    def describe(self) -> str:
        if self.rule is None:
            return "one of " + str(list(self.choices))
        names = {"odd": "an odd integer", "pow2": "a power of two", "int": "an integer", "log": "a number"}
        return f"{names[self.rule]} in [{self.low}, {self.high}]"


def token_text(value: AttrValue) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)

