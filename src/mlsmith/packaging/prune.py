"""A pruned copy of a trained network: the smallest Linear and Conv weights set to zero, a short
fine-tune so the rest make up for them, then the zeros made permanent.

Pruning is global (one magnitude threshold over every Linear and Conv weight, so layers with many
small weights lose more) and unstructured (single weights, not whole channels), with
``torch.nn.utils.prune``. Embeddings, biases, norms and the output head are kept. The fine-tune
uses the run's optimizer settings, batches and precision on the training split, with the pruned
weights held at zero, for :data:`FINE_TUNE_STEPS` optimizer steps or one epoch, whichever is
fewer.

The zeros are stored densely in the exported file and computed densely by ONNX Runtime: a pruned
package is neither smaller nor faster by itself; it compresses well and quantizes the same.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.utils import prune

from mlsmith.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from mlsmith.config import Config
    from mlsmith.data.base import Preprocessor, Split
    from mlsmith.models.base import Model
    from mlsmith.runtime.package import Encoder

FINE_TUNE_STEPS = 300
PRUNED_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)

Target = tuple[torch.nn.Module, str]


@dataclass
class Pruned:
    """The pruned network (eval mode, on the CPU) and what was done to it."""

    network: torch.nn.Module
    record: dict[str, Any]


def prune_for_export(
    model: Model,
    network: torch.nn.Module,
    amount: float,
    encoder: Encoder,
    encoded: dict[str, np.ndarray],
    truth: np.ndarray,
    train: Split,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The pruned copy of ``network`` (``model``'s, on the CPU) and its record for
    ``export.json``: what was pruned, and the headline metric of the dense and the pruned network
    (torch eager, both) on the encoded check rows with the paired interval of the difference."""
    from mlsmith.packaging.formats import EagerRunner
    from mlsmith.packaging.graphs import inference_graph
    from mlsmith.packaging.measures import metric_difference, raw_outputs

    batch_size = model.config.train.eval_batch_size

    def outputs(net: torch.nn.Module) -> np.ndarray:
        graph = EagerRunner(inference_graph(net, model.preprocessor))
        return raw_outputs(graph.raw, encoder, encoded, batch_size)

    dense = outputs(network)
    result = prune_network(
        network, amount, preprocessor=model.preprocessor, train=train, config=model.config
    )
    versus = metric_difference(
        model.task,
        truth,
        dense,
        outputs(result.network),
        resamples=model.config.eval.bootstrap,
        seed=model.config.seed,
    )
    record = result.record | {
        "metric": versus["metric"],
        "dense_value": versus["base"],
        "pruned_value": versus["variant"],
        "difference": versus["difference"],
        "ci95": versus["ci95"],
        "rows": versus["rows"],
    }
    return result.network, record


def prune_network(
    network: torch.nn.Module,
    amount: float,
    *,
    preprocessor: Preprocessor,
    train: Split,
    config: Config,
) -> Pruned:
    """Prune ``amount`` of a copy of ``network``'s Linear/Conv weights, fine-tune it on
    ``train`` (the run's encoded training split), and make the pruning permanent."""
    pruned = copy.deepcopy(network)
    layers = [module for module in pruned.modules() if isinstance(module, PRUNED_TYPES)]
    if not layers:
        raise ConfigError("--prune / export.prune: the network has no Linear or Conv weights")
    # The head (the last Linear layer, as every family builds it) stays dense: each family
    # starts it near zero so the first loss is ln(C), and one global threshold would then take
    # all of it first: 50% of a 64-64 MLP's weights removed 100% of its head, and the network
    # answered a constant. It holds a small share of the weights and every output goes
    # through it. A network whose only layer is its head (the bag) has that pruned.
    head = layers[-1] if len(layers) > 1 and isinstance(layers[-1], torch.nn.Linear) else None
    targets: list[Target] = [(module, "weight") for module in layers if module is not head]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    steps = _fine_tune(pruned, targets, preprocessor, train, config)
    for module, name in targets:
        prune.remove(module, name)
    weights = [getattr(module, name) for module, name in targets]
    zeros = sum(int((weight == 0).sum()) for weight in weights)
    total = sum(int(weight.numel()) for weight in weights)
    return Pruned(
        pruned.cpu().eval(),
        {
            "amount": amount,
            "sparsity": round(zeros / total, 6),
            "weights": total,
            "layers": len(targets),
            "method": "global magnitude (L1, unstructured) over Linear and Conv weights",
            "kept_dense": f"the head ({head.weight.numel()} weights)" if head else None,
            "fine_tune_steps": steps,
            "fine_tune_rows": len(train),
        },
    )


def _fine_tune(
    network: torch.nn.Module,
    targets: list[Target],
    preprocessor: Preprocessor,
    train: Split,
    config: Config,
) -> int:
    """A few optimizer steps of the run's own training on the pruned network; returns how many."""
    from mlsmith.data.batches import BatchOptions
    from mlsmith.training.device import resolve_device
    from mlsmith.training.optimizers import build_optimizer
    from mlsmith.training.precision import build_precision
    from mlsmith.training.step import optimizer_step

    cfg = config.train
    device = resolve_device(cfg.device)
    batches = preprocessor.batches(
        train.inputs, train.target, BatchOptions.training(cfg, config.seed)
    )
    batches.to(device)
    steps = min(FINE_TUNE_STEPS, batches.n_steps(cfg.grad_accum_steps))
    network.to(device).train()
    optimizer = build_optimizer(network, cfg.optimizer)
    precision = build_precision(cfg.precision, device)

    def forward(**inputs: torch.Tensor) -> torch.Tensor:
        # torch's pruning recomputes weight = weight_orig * weight_mask only when a module's own
        # forward runs; attention reads its output projection's weight directly, so every
        # masked weight is recomputed here, inside this step's graph.
        for module, name in targets:
            setattr(module, name, getattr(module, name + "_orig") * getattr(module, name + "_mask"))
        return network(**inputs)

    def finite(loss: torch.Tensor, *_: object) -> None:
        if not math.isfinite(float(loss)):
            raise ConfigError(
                f"--prune / export.prune: fine-tuning the pruned network diverged (loss "
                f"{float(loss)}); prune less, or lower train.optimizer.lr"
            )

    # Dropout draws from the global generator: seeded for a repeatable result, in a fork so
    # exporting leaves the caller's random state as it was.
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(config.seed)
        for micro_batches in islice(batches.steps(cfg.grad_accum_steps), steps):
            optimizer_step(
                micro_batches,
                forward=forward,
                loss_fn=preprocessor.task.loss,
                optimizer=optimizer,
                precision=precision,
                clip=cfg.grad_clip,
                before_update=finite,
            )
    for module, name in targets:  # the final weights, for prune.remove to keep
        setattr(module, name, getattr(module, name + "_orig") * getattr(module, name + "_mask"))
    network.eval()
    return steps
