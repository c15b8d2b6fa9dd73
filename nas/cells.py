"""Recurrent cells compiled into torch modules (the trees of `nas.space.cell`).

    >>> import torch
    >>> spec = CellSpec(base=2, nodes=(("add", "tanh"), ("mul", "relu"), ("mul", "sigmoid")),
    ...                 inject=("add", "relu"), inject_at=0, memory_from=1)
    >>> cell = Cell(spec, input_size=3, hidden_size=5)
    >>> h, c = cell(torch.randn(4, 3), (torch.zeros(4, 5), torch.zeros(4, 5)))
    >>> h.shape, c.shape
    (torch.Size([4, 5]), torch.Size([4, 5]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nas.space.cell import CellSpec, tree_children

COMBINES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"add": torch.add, "mul": torch.mul}
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "identity": lambda a: a,
}

State = tuple[torch.Tensor, torch.Tensor]  # (h, c)


class Cell(nn.Module):
    """One step of a cell: (x_t, (h_{t-1}, c_{t-1})) -> (h_t, c_t); c passes through unchanged without memory."""

    def __init__(self, spec: CellSpec, input_size: int, hidden_size: int, device: str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.hidden_size = hidden_size
        # All leaves' W_i (and U_i) in one matmul: a cell runs once per time step, so launches add up.
        self.w = nn.Linear(input_size, spec.base * hidden_size, device=device)
        self.u = nn.Linear(hidden_size, spec.base * hidden_size, bias=False, device=device)
        self._children = tree_children(spec.base)

    def forward(self, x_t: torch.Tensor, state: State) -> State:
        h, c = state
        spec = self.spec
        wx = self.w(x_t).split(self.hidden_size, dim=-1)
        uh = self.u(h).split(self.hidden_size, dim=-1)
        outputs: list[torch.Tensor] = []
        c_new = c
        for i, (combine, activation) in enumerate(spec.nodes):
            left, right = (wx[i], uh[i]) if i < spec.base else (outputs[j] for j in self._children[i])
            combined = COMBINES[combine](left, right)
            a = ACTIVATIONS[activation](combined)
            if i == spec.memory_from:  # before the activation, as the paper's c_t (see CELL_MEMORY)
                c_new = combined
            if i == spec.inject_at:
                assert spec.inject is not None  # all memory settings are set together
                inj_combine, inj_activation = spec.inject
                a = ACTIVATIONS[inj_activation](COMBINES[inj_combine](a, c))
            outputs.append(a)
        return outputs[-1], c_new


class CellRNN(nn.Module):
    """A cell unrolled over a sequence (B, L, C) from zero states; returns the last hidden state (B, hidden)."""

    def __init__(self, spec: CellSpec, input_size: int, hidden_size: int, device: str | None = None) -> None:
        super().__init__()
        self.cell = Cell(spec, input_size, hidden_size, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros(x.shape[0], self.cell.hidden_size)
        state = (zeros, zeros)
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        return state[0]


__all__ = ["Cell", "CellRNN"]
