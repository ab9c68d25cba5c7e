"""Inference from a model package, with neither torch nor mlsmith's training stack.

Everything here imports only the standard library, NumPy, pandas and, when a package needs
them, ONNX Runtime, ``tokenizers``, Pillow, LightGBM or XGBoost; inside this folder imports are
relative. That is what lets the folder travel inside every package (as ``mlsmith_runtime``, in
MLflow's ``code/``) and run on a Spark executor, in MLServer or in a slim container. Training
uses the same encoders and decoders, so a package cannot drift from the run it came from.
"""
