"""The search-space language: architectures as sentences, spaces as vocabularies."""

from nas.space.architecture import Architecture, ArchitectureError, HParams, Node
from nas.space.auto import resolve_space
from nas.space.domain import Domain, SpaceError
from nas.space.shapes import Plan, infer
from nas.space.space import SearchSpace

__all__ = ["Architecture", "ArchitectureError", "Domain", "HParams", "Node", "Plan", "SearchSpace",
           "SpaceError", "infer", "resolve_space"]
