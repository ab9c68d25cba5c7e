"""Packaging: a trained model as a package that runs without torch, verified against torch.

``graphs`` wraps a network with the last steps of its batches so the exported graph reads what
the package's encoders produce; ``formats`` writes ONNX and TorchScript and runs them back;
``writer`` writes ``<run>/package/`` in MLflow's model format, after every format and the
finished package have been checked against the torch model on the run's test rows. ``prune``
and ``quantize`` make the pruned or int8 network a package may serve instead, and ``measures``
holds what every comparison shares: outputs over the check rows, timings, metric differences.
"""
