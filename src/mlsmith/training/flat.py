"""Parameters, gradients and optimizer state in flat buffers: the same updates, fewer operations.

Why: on the CPU a small model's step is mostly per-operation dispatch. An optimizer visits every
parameter tensor in Python (AdamW: a dozen operations each), the per-step gradient norm (a
diagnostic on by default) took one reduction per parameter, and ``zero_grad(set_to_none=True)``
frees every gradient that backward must allocate again. With each parameter, its gradient and
its optimizer state a view into one flat tensor per parameter group, the optimizer runs its
operations once per group, the total norm is one reduction and zeroing is one ``zero_``: a 64-64
MLP's AdamW step took 0.6 ms per-parameter and 0.35 ms flat (``bench/overhead.py``).

The maths stays a plain loop's, bit for bit: every update is element-wise, so running it over one
tensor or over its pieces gives the same numbers, and backward adds into a gradient that exists
(``grad += new``), so ``0 + g`` is ``g``. One difference would matter: an optimizer skips a
parameter whose gradient is ``None`` but decays and updates one whose gradient is zero. So the
buffers are installed only after a first backward pass in which every trainable parameter got a
gradient; a model that leaves some unused keeps the plain path. The optimizer's own state is
flattened only for the optimizers mlsmith builds (SGD, Adam, AdamW, whose state is element-wise);
any other keeps its parameters and gets flat gradients alone.

Checkpoints never see the flat form: :meth:`FlatBuffers.state_dict` is the optimizer's own
per-parameter ``state_dict``, so a ``last.pt`` resumes the same with or without buffers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from operator import attrgetter, is_
from typing import Any

import torch

_grad = attrgetter("grad")
# Optimizers whose state is element-wise per parameter (plus a scalar step count), so one flat
# tensor per group steps exactly as its pieces would.
_ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
_PER_ELEMENT_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


class FlatBuffers:
    """Trainable parameters (with their gradients and optimizer state) as views into flat
    tensors, once proven safe; see the module docstring."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        self.params = params
        self.optimizer = optimizer
        # Parameters in optimizer-group order, so each group is one contiguous slice.
        self.groups: list[list[torch.nn.Parameter]] = [
            list(g["params"]) for g in optimizer.param_groups
        ]
        grouped = [p for group in self.groups for p in group]
        # The optimizer's parameters too, when its state is element-wise and it steps exactly
        # the trainable parameters, each once.
        self.flatten_params = (
            type(optimizer) in _ELEMENTWISE
            and len(grouped) == len(params)
            and {id(p) for p in grouped} == {id(p) for p in params}
            and not any(g.get("fused") or g.get("differentiable") for g in optimizer.param_groups)
        )
        order = grouped if self.flatten_params else params
        sizes = [p.numel() for p in order]
        self.flat = torch.zeros(sum(sizes), dtype=params[0].dtype, device=params[0].device)
        views = dict(zip(map(id, order), _views(self.flat, order), strict=True))
        self.views = [views[id(p)] for p in params]  # each parameter's gradient, in its order
        self.installed = False
        self.leaves: list[torch.Tensor] = []  # each group's flat parameter, once installed
        self._decided = False  # after the first backward pass: installed, or plain for good

    @classmethod
    def for_params(
        cls, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer
    ) -> FlatBuffers | None:
        """Buffers for ``params`` stepped by ``optimizer``, or None where the plain path is the
        right one.

        CPU only: on a GPU the dispatch cost it saves is hidden behind queued kernels (and
        torch's optimizers already run multi-tensor kernels there). One dtype and the default
        memory layout (a channels-last convolution's gradient must keep its parameter's
        strides), dense parameters only.
        """
        if not params or any(p.device.type != "cpu" for p in params):
            return None
        if len({p.dtype for p in params}) != 1 or not params[0].dtype.is_floating_point:
            return None
        if any(p.is_sparse or not p.is_contiguous() for p in params):
            return None
        return cls(params, optimizer)

    # --- every step ---------------------------------------------------------------------------

    def before_update(self) -> None:
        """After backward, before the gradients are read or the weights change."""
        if not self._decided:
            self._decide()
        elif self.installed and not self._intact():
            # Something replaced a gradient (model.zero_grad() in a callback, say): the buffer
            # no longer holds them all, so the plain path takes over for the rest of the run.
            self._uninstall()

    def total_norm(self) -> torch.Tensor | None:
        """The L2 norm of all gradients together (one reduction); None on the plain path."""
        return torch.linalg.vector_norm(self.flat) if self.installed else None

    def zero_(self) -> None:
        """Clear the gradients after an update (in place once installed)."""
        if self.installed:
            self.flat.zero_()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's ``state_dict`` as it would be without the buffers: per parameter."""
        if not self.leaves:
            return self.optimizer.state_dict()
        with self._per_parameter():
            return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a per-parameter optimizer state (before training: the buffers come after)."""
        if self.leaves:
            raise RuntimeError("load the optimizer state before the first step")
        self.optimizer.load_state_dict(state)

    def release(self) -> None:
        """Give every parameter its own storage, no gradient, and the optimizer its per-parameter
        groups and state back (after training)."""
        if self.installed:
            self._uninstall()
            for p in self.params:
                p.grad = None

    # --- installing and removing --------------------------------------------------------------

    def _decide(self) -> None:
        """After the first backward pass: take the gradients in if every parameter has one.

        They are copied in (not just zeroed after the update) so that the first step's norm
        is the same one reduction as every later step's, and a resumed run logs the same
        numbers as an uninterrupted one.
        """
        self._decided = True
        if not all(p.grad is not None for p in self.params):
            return
        state = self.optimizer.state
        if self.flatten_params and not _flattenable([state.get(p) for p in self.params]):
            self.flatten_params = False  # a state it cannot join (mixed step counts): grads only
        for p, view in zip(self.params, self.views, strict=True):
            view.copy_(p.grad)  # type: ignore[arg-type]
            p.grad = view
        self.installed = True
        if not self.flatten_params:
            return
        values = torch.empty_like(self.flat)
        for group, flat_group, grad_group in zip(
            self.optimizer.param_groups,
            self._split_groups(values),
            self._split_groups(self.flat),
            strict=True,
        ):
            params = group["params"]
            pieces = _views(flat_group, params)
            for p, piece in zip(params, pieces, strict=True):
                piece.copy_(p.detach())
            leaf = flat_group.detach().requires_grad_(True)
            leaf.grad = grad_group
            saved = [state.pop(p, None) for p in params]
            if any(saved):
                state[leaf] = _joined(saved)
            for p, piece in zip(params, pieces, strict=True):
                p.data = piece
            group["params"] = [leaf]
            self.leaves.append(leaf)

    def _uninstall(self) -> None:
        """Back to the plain path for good: per-parameter storage, state and groups."""
        self.installed = False
        if not self.leaves:
            return
        state = self.optimizer.state
        for group, leaf, params in zip(
            self.optimizer.param_groups, self.leaves, self.groups, strict=True
        ):
            joined = state.pop(leaf, None)
            if joined is not None:
                for p, piece in zip(params, _split_state(joined, params), strict=True):
                    state[p] = {k: v.clone() for k, v in piece.items()}
            for p in params:
                p.data = p.data.clone()
            group["params"] = list(params)
        self.leaves = []

    @contextmanager
    def _per_parameter(self) -> Iterator[None]:
        """The optimizer seen per parameter (views into the flat state) for a moment."""
        optimizer = self.optimizer
        flat_state, flat_params = optimizer.state, [g["params"] for g in optimizer.param_groups]
        state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for leaf, params in zip(self.leaves, self.groups, strict=True):
            if leaf in flat_state:
                state.update(zip(params, _split_state(flat_state[leaf], params), strict=True))
        try:
            optimizer.state = state
            for group, params in zip(optimizer.param_groups, self.groups, strict=True):
                group["params"] = params
            yield
        finally:
            optimizer.state = flat_state
            for group, params in zip(optimizer.param_groups, flat_params, strict=True):
                group["params"] = params

    def _split_groups(self, flat: torch.Tensor) -> list[torch.Tensor]:
        sizes = [sum(p.numel() for p in group) for group in self.groups]
        return list(flat.split(sizes))

    def _intact(self) -> bool:
        # In C (map/is_), not a generator: this runs every step, over every parameter.
        return all(map(is_, map(_grad, self.params), self.views))


def _flattenable(states: list[dict[str, Any] | None]) -> bool:
    """Whether per-parameter states can be one: none yet, or all with the same step count."""
    if not any(states):
        return True
    if not all(states):
        return False
    keys = {tuple(sorted(s)) for s in states if s is not None}
    steps = {float(s["step"]) for s in states if s is not None and "step" in s}
    known = set(_PER_ELEMENT_STATE) | {"step"}
    return (
        len(keys) == 1
        and len(steps) <= 1
        and set(next(iter(keys))) <= known
        and all(s[k] is not None for s in states if s is not None for k in s)
    )


def _views(flat: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """``flat`` cut into one view per parameter, each shaped like it."""
    pieces = flat.split([p.numel() for p in params])
    return [piece.view_as(p) for piece, p in zip(pieces, params, strict=True)]


def _joined(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One group's per-parameter states as one state over the group's flat parameter."""
    first = states[0]
    return {
        key: (
            torch.cat([s[key].reshape(-1) for s in states])
            if key in _PER_ELEMENT_STATE
            else first[key].clone()
        )
        for key in first
    }


def _split_state(joined: dict[str, Any], params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """The inverse of :func:`_joined`: views of the element-wise state, a step count each (a
    shared one would be counted once per parameter by a per-parameter optimizer)."""
    split = {
        key: _views(value, params) for key, value in joined.items() if key in _PER_ELEMENT_STATE
    }
    return [
        {key: split[key][i] if key in split else value.clone() for key, value in joined.items()}
        for i in range(len(params))
    ]
