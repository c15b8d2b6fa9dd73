"""A YAML syntax error in one line: PyYAML's own message spans several, with a drawing of the spot."""

from __future__ import annotations

import yaml


def yaml_problem(error: yaml.YAMLError) -> str:
    """'line 3, column 22: expected ',' or ']', but got '}'' (PyYAML counts from 0)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem
