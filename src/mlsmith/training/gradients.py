"""Gradients in one flat buffer: a whole-model gradient norm in one reduction, no per-step
allocation.

Why: on the CPU a small model's optimizer step is mostly per-operation dispatch, and the
per-step gradient norm (a diagnostic on by default) cost one reduction per parameter, a stack and
a second norm: 75-100 us a step for a 64-64 MLP whose step takes 1 ms. With every gradient a
view into one flat tensor the total norm is one reduction, and zeroing the gradients is one
``zero_`` instead of freeing every tensor that backward must then allocate again; measured
together they cost less than a plain loop's ``zero_grad(set_to_none=True)``
(``bench/overhead.py``).

Backward adds into a gradient that exists (``grad += new``), so ``0 + g`` is ``g`` bit for bit
and the update is exactly a plain loop's. One difference would matter: an optimizer skips a
parameter whose gradient is ``None`` but decays and updates one whose gradient is zero. So the
buffer is installed only after a first step in which every trainable parameter received a
gradient; a model that leaves some unused keeps the plain path (so does a run in which
something else replaces a gradient).
"""

from __future__ import annotations

from operator import attrgetter, is_

import torch

_grad = attrgetter("grad")


class FlatGradients:
    """Trainable parameters' gradients as views into one flat tensor, once proven safe."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.flat = torch.zeros(
            sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device
        )
        offsets = [0]
        for p in params:
            offsets.append(offsets[-1] + p.numel())
        self.views = [
            self.flat[start:stop].view_as(p)
            for p, start, stop in zip(params, offsets, offsets[1:], strict=False)
        ]
        self.installed = False
        self._decided = False  # after the first backward pass: installed, or plain for good

    @classmethod
    def for_params(cls, params: list[torch.nn.Parameter]) -> FlatGradients | None:
        """A buffer for ``params``, or None where the plain path is the right one.

        CPU only: on a GPU the dispatch cost it saves is hidden behind queued kernels, while
        gradients kept between steps would hold memory through the next forward pass. One
        dtype and the default memory layout (a channels-last convolution's gradient must keep
        its parameter's strides), dense parameters only.
        """
        if not params or any(p.device.type != "cpu" for p in params):
            return None
        if len({p.dtype for p in params}) != 1 or not params[0].dtype.is_floating_point:
            return None
        if any(p.is_sparse or not p.is_contiguous() for p in params):
            return None
        return cls(params)

    def total_norm(self) -> torch.Tensor | None:
        """The L2 norm of all gradients together (one reduction); None on the plain path."""
        if not self._decided:
            self._decide()
        elif self.installed and not self._intact():
            # Something replaced a gradient (model.zero_grad() in a callback, say): the buffer
            # no longer holds them all, so the plain path takes over for the rest of the run.
            self.installed = False
        return torch.linalg.vector_norm(self.flat) if self.installed else None

    def zero_(self, optimizer: torch.optim.Optimizer) -> None:
        """Clear the gradients after an update (in place once installed)."""
        if not self._decided:
            self._decide()
        if self.installed and self._intact():
            self.flat.zero_()
            return
        self.installed = False
        optimizer.zero_grad(set_to_none=True)

    def _decide(self) -> None:
        """After the first backward pass: take the gradients in if every parameter has one.

        They are copied in (not just zeroed after the update) so that the first step's norm
        is the same one reduction as every later step's, and a resumed run logs the same
        numbers as an uninterrupted one.
        """
        self._decided = True
        if all(p.grad is not None for p in self.params):
            for p, view in zip(self.params, self.views, strict=True):
                view.copy_(p.grad)  # type: ignore[arg-type]
                p.grad = view
            self.installed = True

    def _intact(self) -> bool:
        # In C (map/is_), not a generator: this runs every step, over every parameter.
        return all(map(is_, map(_grad, self.params), self.views))

    def release(self) -> None:
        """Give the parameters back plain ``None`` gradients (after training)."""
        if self.installed:
            for p in self.params:
                p.grad = None
            self.installed = False
