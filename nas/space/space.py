"""SearchSpace: the vocabulary a search may use, loaded from a YAML file.

A space has three parts. `ops` lists the ops a sentence may use and each attribute's
domain. `layout` says how random and grid search write sentences: a layer list of conv
blocks (each optionally pooled and summed with its input), a reduction, dense layers and
the head. With zero conv blocks the sentence is a plain multi-layer perceptron, so the
search can prefer one where convolutions do not help. On flat features (F,) conv blocks
need the `signal` op, which the layout puts before the first block to view the features
as one signal (1, F); a space without it writes perceptrons only. `hparams` gives the
domains of the training hyper-parameters. Sentences that other methods write (mutations,
controllers) need only respect `ops` and `limits`, not the layout.

    >>> import random
    >>> space = SearchSpace.load("spaces/cnn.yaml").bind((1, 8, 8), 10)
    >>> arch, hparams = space.sample(random.Random(0))
    >>> plan = space.validate(arch, hparams)
    >>> space.from_tokens(space.to_tokens(arch, hparams)) == (arch, hparams)
    True
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from nas.space.architecture import Architecture, ArchitectureError, AttrValue, HParams, Node
from nas.space.cell import cell_domain_problem
from nas.space.domain import Domain, SpaceError, token_text
from nas.space.shapes import CONV_OPS, OPS, Plan, Shape, attr_problem, infer
from nas.yaml_errors import yaml_problem

LAYOUT_KEYS = ("conv_blocks", "conv_op", "pool", "skip", "reduce", "dense_layers")
ALWAYS = ("input", "head")
SAMPLE_TRIES = 200


@dataclass(frozen=True)
class SearchSpace:
    name: str
    ops: dict[str, dict[str, Domain]]
    layout: dict[str, Domain]
    hparams: dict[str, Domain]
    max_nodes: int = 24
    max_params: int = 2_000_000
    input_shape: Shape | None = None
    num_classes: int | None = None
    source: str | None = field(default=None, compare=False)
    # Per-method settings, strategy name -> its mapping (e.g. Genetic CNN's stages); each
    # method reads and checks its own, so the language need not know every method.
    methods: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    # The only networks (arch_ids) the space admits, when a finite table answers its trials (a
    # tabular benchmark): mutations and controllers then propose only what can be looked up.
    admitted: frozenset[str] | None = field(default=None, compare=False)

    # ---- loading -------------------------------------------------------------------

    @staticmethod
    def load(path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise SpaceError(f"space file {path} does not exist; pass --space with a YAML file such as "
                             "spaces/cnn.yaml or spaces/mlp.yaml.")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpaceError(f"space file {path} is not valid YAML ({yaml_problem(exc)}). Fix the syntax "
                             "(indentation, colons, brackets) and run again.") from None
        return SearchSpace.from_dict(raw, source=str(path))

    @staticmethod
    def from_dict(raw: Any, source: str = "<dict>") -> SearchSpace:
        if not isinstance(raw, dict):
            raise SpaceError(f"{source}: a space file is a mapping with keys name, limits, ops, layout, hparams.")
        unknown = set(raw) - {"name", "description", "limits", "ops", "layout", "hparams", "methods"}
        if unknown:
            raise SpaceError(f"{source}: unknown top-level keys {sorted(unknown)}; allowed are "
                             "name, description, limits, ops, layout, hparams, methods.")
        ops: dict[str, dict[str, Domain]] = {op: {} for op in ALWAYS}
        for op, attrs in _mapping(raw.get("ops"), f"{source}: ops", "op names to their attributes' domains").items():
            if op not in OPS:
                raise SpaceError(f"{source}: unknown op '{op}' under ops; the language knows {sorted(OPS)}.")
            attrs = _mapping(attrs, f"{source}: ops.{op}", "attribute names to domains")
            wanted = set(OPS[op].attrs)
            if set(attrs) != wanted:
                raise SpaceError(f"{source}: ops.{op} must give a domain for exactly {sorted(wanted)}, "
                                 f"got {sorted(attrs)}.")
            ops[op] = {a: Domain.parse(v, f"{source}: ops.{op}.{a}") for a, v in attrs.items()}
            for name, domain in ops[op].items():
                for value in domain.values():
                    if problem := attr_problem(name, value):
                        raise SpaceError(f"{source}: ops.{op}.{name} holds {value!r}, which {problem}")
        if "cell" in ops and (problem := cell_domain_problem({a: d.values() for a, d in ops["cell"].items()})):
            raise SpaceError(f"{source}: ops.cell.{problem}")
        layout_raw = _mapping(raw.get("layout"), f"{source}: layout", "layout keys to domains")
        unknown = set(layout_raw) - set(LAYOUT_KEYS)
        if unknown:
            raise SpaceError(f"{source}: unknown layout keys {sorted(unknown)}; allowed are {list(LAYOUT_KEYS)}.")
        layout = {k: Domain.parse(v, f"{source}: layout.{k}") for k, v in layout_raw.items()}
        hp_names = {f.name for f in fields(HParams)}
        hp_raw = _mapping(raw.get("hparams"), f"{source}: hparams", "hyper-parameter names to domains")
        unknown = set(hp_raw) - hp_names
        if unknown:
            raise SpaceError(f"{source}: unknown hparams {sorted(unknown)}; known are {sorted(hp_names)}.")
        hparams = {k: Domain.parse(v, f"{source}: hparams.{k}") for k, v in hp_raw.items()}
        for name, domain in hparams.items():  # every value a trial could be given, checked before any trains
            for value in (domain.values()[0], domain.values()[-1]) if domain.rule else domain.values():
                try:
                    HParams(**{name: value})
                except ArchitectureError as error:
                    raise SpaceError(f"{source}: hparams.{name} allows {value!r}, which no trial can train with "
                                     f"({error}); change the domain in the space file.") from None
        limits = _mapping(raw.get("limits"), f"{source}: limits", "max_nodes and max_params to integers")
        methods = _mapping(raw.get("methods"), f"{source}: methods", "strategy names to their settings")
        for method, settings in methods.items():
            _mapping(settings, f"{source}: methods.{method}", "setting names to values")
        space = SearchSpace(
            name=str(raw.get("name", Path(source).stem)), ops=ops, layout=layout, hparams=hparams,
            max_nodes=_limit(limits, "max_nodes", 24, source),
            max_params=_limit(limits, "max_params", 2_000_000, source),
            source=source, methods={m: dict(v or {}) for m, v in methods.items()})
        space._check_layout()
        return space

    def _check_layout(self) -> None:
        for op in self.layout.get("conv_op", Domain(("conv",))).values():
            if op not in CONV_OPS:
                raise SpaceError(f"{self.source}: layout.conv_op value '{op}' is not one of {list(CONV_OPS)}.")
        needs = {"conv_blocks": self.conv_ops(), "dense_layers": ["dense"]}
        for key, ops in needs.items():
            missing = [op for op in ops if op not in self.ops]
            if key in self.layout and max(self.layout[key].values()) > 0 and missing:
                raise SpaceError(f"{self.source}: layout.{key} asks for {missing[0]} layers but ops has no "
                                 f"'{missing[0]}'.")
        for value in self.layout.get("pool", Domain(("none",))).values():
            if value != "none" and ("pool" not in self.ops or not self.ops["pool"]["kind"].contains(value)):
                raise SpaceError(f"{self.source}: layout.pool value '{value}' is not an ops.pool kind.")
        for key in ("skip", "reduce"):
            for value in self.layout.get(key, Domain(("none",))).values():
                if value != "none" and value not in self.ops:
                    raise SpaceError(f"{self.source}: layout.{key} value '{value}' is not an op of the space.")
        if "reduce" not in self.layout:
            raise SpaceError(f"{self.source}: layout.reduce is required (e.g. [global_pool, flatten]).")

    def method_settings(self, method: str) -> dict[str, Any]:
        """The space file's `methods.<method>` mapping (empty when it gives none)."""
        return dict(self.methods.get(method, {}))

    def bind(self, input_shape: Shape, num_classes: int) -> SearchSpace:
        """The same space for a concrete dataset: shapes are needed to validate, sample and count."""
        return replace(self, input_shape=tuple(input_shape), num_classes=int(num_classes))

    def with_hparams(self, **fixed: AttrValue) -> SearchSpace:
        """Pin hyper-parameters to one value each, e.g. the epochs a search was given."""
        pinned = {k: Domain(choices=(v,)) for k, v in fixed.items() if v is not None}
        return replace(self, hparams={**self.hparams, **pinned})

    def admitting(self, arch_ids: Iterable[str]) -> SearchSpace:
        """The same space confined to the networks `arch_ids` name (e.g. a benchmark table's)."""
        return replace(self, admitted=frozenset(arch_ids))

    def bound(self) -> tuple[Shape, int]:
        """The input shape and class count this space was bound to; SpaceError if it was not."""
        if self.input_shape is None or self.num_classes is None:
            raise SpaceError(f"space '{self.name}' is not bound to a dataset; call space.bind(shape, classes).")
        return self.input_shape, self.num_classes

    # ---- validation ----------------------------------------------------------------

    def validate(self, arch: Architecture, hparams: HParams | None = None) -> Plan:
        """The plan of a valid sentence, or ArchitectureError naming the node, attribute and rule."""
        shape, classes = self.bound()
        if len(arch.nodes) - 2 > self.max_nodes:
            raise ArchitectureError(f"{len(arch.nodes) - 2} hidden nodes exceed the space's max_nodes="
                                    f"{self.max_nodes}.")
        for i, node in enumerate(arch.nodes):
            if node.op not in self.ops:
                raise ArchitectureError(f"node {i}: op '{node.op}' is not in space '{self.name}'; "
                                        f"allowed ops are {sorted(self.ops)}.")
            for name, value in node.attrs:
                domain = self.ops[node.op].get(name)
                if name == "kernel_h" and self.one_d:
                    continue  # 1-D convolutions: shape inference insists on 1 instead
                if domain is not None and not domain.contains(value):
                    raise ArchitectureError(f"node {i} ({node.op}): attribute '{name}'={value!r} breaks the "
                                            f"rule '{domain.describe()}' of space '{self.name}'.")
        if self.admitted is not None and arch.arch_id not in self.admitted:
            raise ArchitectureError(f"the network is not one of the {len(self.admitted)} networks space "
                                    f"'{self.name}' admits here (a benchmark table answers only those).")
        plan = infer(arch, shape, classes)
        if plan.params > self.max_params:
            raise ArchitectureError(f"the network has {plan.params:,} parameters, over the space's limit "
                                    f"max_params={self.max_params:,}; use fewer channels or units, more "
                                    "pooling before flatten, or raise limits.max_params.")
        if hparams is not None:
            for name, domain in self.hparams.items():
                value = getattr(hparams, name)
                if not domain.contains(value):
                    raise ArchitectureError(f"hyper-parameter {name}={value!r} breaks the rule "
                                            f"'{domain.describe()}' of space '{self.name}'.")
        return plan

    def is_valid(self, arch: Architecture, hparams: HParams | None = None) -> bool:
        try:
            self.validate(arch, hparams)
        except ArchitectureError:
            return False
        return True

    # ---- writing sentences from the layout -----------------------------------------

    def _rank(self) -> int:
        return len(self.bound()[0])

    @property
    def one_d(self) -> bool:
        """Whether convolutions on the bound data are 1-D: signals (C, L), or flat features
        that a `signal` node views as one signal."""
        return self.input_shape is not None and len(self.input_shape) < 3

    def domains(self, op: str) -> dict[str, Domain]:
        """An op's attribute domains for the bound data: 1-D convolutions have only kernel_h 1."""
        domains = dict(self.ops.get(op, {}))
        if op in CONV_OPS and self.one_d:
            domains["kernel_h"] = Domain(choices=(1,))
        return domains

    def conv_ops(self) -> list[str]:
        """The ops the layout's conv blocks use: conv, hyperconv (generated kernels) or both."""
        return [str(op) for op in self.layout.get("conv_op", Domain(("conv",))).values()]

    def has_conv(self) -> bool:
        """Whether the layout can write conv blocks at all (the space has their op)."""
        return all(op in self.ops for op in self.conv_ops())

    def reductions(self, n_blocks: int) -> list[str]:
        """The layout's reductions after `n_blocks` conv blocks."""
        # Global pooling of the raw input averages every feature into one number per
        # channel; a layer list without conv blocks flattens instead.
        choices = [str(v) for v in self.layout_domain("reduce", "flatten").values()]
        return choices if n_blocks or "flatten" not in choices else ["flatten"]

    def layout_domain(self, key: str, default: AttrValue) -> Domain:
        """A layout key's domain for the bound data (`default` where the file leaves it out)."""
        domain = self.layout.get(key, Domain(choices=(default,)))
        if key in ("conv_blocks", "reduce") and self._rank() == 1 and "signal" not in self.ops:
            # flat features and no signal op to view them as one: no convolution applies
            return Domain(choices=(0,) if key == "conv_blocks" else ("flatten",))
        return domain

    def _assemble(self, blocks: list[tuple[str, dict, str, str]], reduce: tuple[str, dict],
                  dense: list[dict]) -> Architecture:
        """A layer list into a graph: conv blocks (op, attributes, pool, skip), reduction (op,
        attributes), dense layers, head."""
        nodes = [Node.make("input")]
        if (blocks or reduce[0] == "cell") and self._rank() == 1:  # both read flat features as a signal
            nodes.append(Node.make("signal", [0]))
        for op, conv, pool, skip in blocks:
            block_input = len(nodes) - 1
            nodes.append(Node.make(op, [block_input], **conv))
            if pool != "none":
                nodes.append(Node.make("pool", [len(nodes) - 1], kind=pool, size=self._pool_size()))
            if skip != "none":
                nodes.append(Node.make(skip, [len(nodes) - 1, block_input]))
        nodes.append(Node.make(reduce[0], [len(nodes) - 1], **reduce[1]))
        for attrs in dense:
            nodes.append(Node.make("dense", [len(nodes) - 1], **attrs))
        nodes.append(Node.make("head", [len(nodes) - 1]))
        return Architecture(tuple(nodes))

    def _reduce_choices(self, n_blocks: int) -> Iterator[tuple[str, dict[str, AttrValue]]]:
        """Every reduction with its attributes, lazily: a cell's tree has billions."""
        for op in self.reductions(n_blocks):
            names = list(self.domains(op))
            for combo in itertools.product(*(self.domains(op)[n].values() for n in names)):
                yield op, dict(zip(names, combo))

    def _pool_size(self) -> int:
        return int(self.ops["pool"]["size"].values()[0])

    def sample_arch(self, rng: random.Random) -> Architecture:
        for _ in range(SAMPLE_TRIES):
            n_blocks = int(self.layout_domain("conv_blocks", 0).sample(rng))
            blocks = []
            for _ in range(n_blocks):
                ops = self.conv_ops()
                op = ops[0] if len(ops) == 1 else rng.choice(ops)  # one op draws nothing: old seeds replay
                blocks.append((op, {a: d.sample(rng) for a, d in self.domains(op).items()},
                               self.layout_domain("pool", "none").sample(rng),
                               self.layout_domain("skip", "none").sample(rng)))
            op = rng.choice(self.reductions(n_blocks))
            reduce = (op, {a: d.sample(rng) for a, d in self.domains(op).items()})
            n_dense = int(self.layout_domain("dense_layers", 0).sample(rng))
            dense = [{a: d.sample(rng) for a, d in self.ops["dense"].items()} for _ in range(n_dense)]
            arch = self._assemble(blocks, reduce, dense)
            if self.is_valid(arch):
                return arch
        raise SpaceError(f"space '{self.name}' produced no valid architecture in {SAMPLE_TRIES} samples for "
                         f"input {self.input_shape}; its limits (max_params={self.max_params:,}, max_nodes="
                         f"{self.max_nodes}) or strides and pools are too tight for this data.")

    def sample_hparams(self, rng: random.Random) -> HParams:
        return HParams(**{name: d.sample(rng) for name, d in self.hparams.items()})

    def sample(self, rng: random.Random) -> tuple[Architecture, HParams]:
        return self.sample_arch(rng), self.sample_hparams(rng)

    def _choices(self, domains: dict[str, Domain]) -> list[dict[str, AttrValue]]:
        names = list(domains)
        return [dict(zip(names, combo)) for combo in itertools.product(*(domains[n].values() for n in names))]

    def grid_size(self) -> int:
        """How many sentences the grid holds before invalid ones are dropped."""
        block = sum(len(self._choices(self.domains(op))) for op in self.conv_ops()) if self.has_conv() else 0
        block *= len(self.layout_domain("pool", "none").values()) * len(self.layout_domain("skip", "none").values())
        dense = len(self._choices(self.ops["dense"])) if "dense" in self.ops else 0
        archs = sum(block**b * dense**d * sum(math.prod(len(v.values()) for v in self.domains(r).values())
                                              for r in self.reductions(b))
                    for b in self.layout_domain("conv_blocks", 0).values()
                    for d in self.layout_domain("dense_layers", 0).values())
        return archs * len(self._choices(self.hparams))

    def enumerate(self) -> Iterator[tuple[Architecture, HParams]]:
        """Every valid sentence of the layout, smallest networks first, in a fixed order."""
        blocks = [(op, c, p, s) for op in (self.conv_ops() if self.has_conv() else [])
                  for c in self._choices(self.domains(op))
                  for p in self.layout_domain("pool", "none").values()
                  for s in self.layout_domain("skip", "none").values()]
        dense = self._choices(self.ops["dense"]) if "dense" in self.ops else []
        hparams = [HParams(**h) for h in self._choices(self.hparams)]
        for n_blocks in sorted(self.layout_domain("conv_blocks", 0).values()):
            for n_dense in sorted(self.layout_domain("dense_layers", 0).values()):
                for reduce in self._reduce_choices(n_blocks):
                    for conv_combo in itertools.product(blocks, repeat=n_blocks):
                        for dense_combo in itertools.product(dense, repeat=n_dense):
                            arch = self._assemble(list(conv_combo), reduce, list(dense_combo))
                            if self.is_valid(arch):
                                for hp in hparams:
                                    yield arch, hp

    # ---- encodings -----------------------------------------------------------------

    def _op_names(self) -> list[str]:
        return sorted(self.ops)

    @property
    def encoding_size(self) -> int:
        per_node = len(self._op_names()) + max(len(s.attrs) for s in OPS.values()) + 1
        return (self.max_nodes + 1) * per_node + len(fields(HParams))

    def encode(self, arch: Architecture, hparams: HParams) -> list[float]:
        """A fixed-length vector in [0, 1] for Gaussian processes and predictors."""
        ops = self._op_names()
        width = max(len(s.attrs) for s in OPS.values())
        vector: list[float] = []
        for slot in range(1, self.max_nodes + 2):
            features = [0.0] * (len(ops) + width + 1)
            if slot < len(arch.nodes):
                node = arch.nodes[slot]
                features[ops.index(node.op)] = 1.0
                for k, name in enumerate(OPS[node.op].attrs):
                    domain = self.domains(node.op).get(name)
                    features[len(ops) + k] = domain.encode(node.get(name)) if domain else 0.0
                if len(node.inputs) > 1:  # how far back a skip reaches
                    features[-1] = (slot - min(node.inputs)) / (self.max_nodes + 1)
            vector.extend(features)
        for f in fields(HParams):
            domain = self.hparams.get(f.name)
            vector.append(domain.encode(getattr(hparams, f.name)) if domain else 0.0)
        return vector

    def to_tokens(self, arch: Architecture, hparams: HParams) -> list[str]:
        """A token sequence for sequence models: op, attr=value..., <k (input k nodes back)."""
        tokens: list[str] = []
        for i, node in enumerate(arch.nodes[1:], start=1):
            tokens.append(node.op)
            tokens.extend(f"{name}={token_text(node.get(name))}" for name in OPS[node.op].attrs)
            tokens.extend(f"<{i - j}" for j in node.inputs)
        tokens.extend(f"hp.{f.name}={token_text(getattr(hparams, f.name))}" for f in fields(HParams))
        return tokens

    def from_tokens(self, tokens: list[str]) -> tuple[Architecture, HParams]:
        raw_nodes: list[dict[str, Any]] = [{"op": "input", "attrs": {}, "inputs": []}]
        hp: dict[str, Any] = {}
        for position, token in enumerate(tokens):
            try:
                if token.startswith("hp."):
                    name, text = token[3:].split("=", 1)
                    hp[name] = self._hparam_value(name, text)
                elif token.startswith("<"):
                    raw_nodes[-1]["inputs"].append(len(raw_nodes) - 1 - int(token[1:]))
                elif "=" in token:
                    name, text = token.split("=", 1)
                    op = raw_nodes[-1]["op"]
                    domain = self.domains(op).get(name) or Domain(rule="int", low=0, high=1 << 30)
                    raw_nodes[-1]["attrs"][name] = domain.parse_token(text)
                elif token in OPS:
                    raw_nodes.append({"op": token, "attrs": {}, "inputs": []})
                else:
                    raise ValueError("not an op, attribute, input or hyper-parameter")
            except ValueError as exc:
                raise ArchitectureError(f"token {position} '{token}': {exc}.") from None
        return Architecture.from_json({"nodes": raw_nodes}), HParams.from_json(hp)

    def hparam_domain(self, name: str) -> Domain:
        """The space's domain for a hyper-parameter, or the default value where it gives none."""
        return self.hparams.get(name) or Domain(choices=(getattr(HParams(), name),))

    def _hparam_value(self, name: str, text: str) -> AttrValue:
        if name not in self.hparams:
            return type(getattr(HParams(), name))(text)
        return self.hparams[name].parse_token(text)

    def nearest_hparams(self, hparams: HParams) -> HParams:
        """The hyper-parameters the vocabulary can write that are closest to these (a log
        range's sample becomes its nearest grid point)."""
        return HParams(**{f.name: self.hparam_domain(f.name).nearest(getattr(hparams, f.name))
                          for f in fields(HParams)})

    def vocabulary(self) -> list[str]:
        """Every token a controller may emit, in a fixed order (index = token id)."""
        tokens = sorted(op for op in self.ops if op != "input")
        for op in sorted(self.ops):
            for name, domain in self.domains(op).items():
                tokens.extend(f"{name}={token_text(v)}" for v in domain.values())
        tokens.extend(f"<{k}" for k in range(1, self.max_nodes + 2))
        for f in fields(HParams):
            tokens.extend(f"hp.{f.name}={token_text(v)}" for v in self.hparam_domain(f.name).values())
        return list(dict.fromkeys(tokens))


def _mapping(value: Any, where: str, what: str) -> dict[str, Any]:
    """A section of a space file as a mapping (empty when left out); a list or a scalar there is named."""
    value = value or {}
    if not isinstance(value, dict):
        raise SpaceError(f"{where} must be a mapping of {what}, got the {type(value).__name__} {value!r:.60}.")
    return value


def _limit(limits: dict[str, Any], key: str, default: int, source: str) -> int:
    value = limits.get(key, default)
    if type(value) is not int or value < 1:
        raise SpaceError(f"{source}: limits.{key} must be a positive integer, got {value!r}.")
    return value
