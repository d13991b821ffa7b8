"""cloudlib: the thin library behind the cloud-companion notebooks (CLOUD, Xu, Zhu & Viswanathan).

Modules: ``scope`` (SCOPE strings), ``tokenizer`` (SCOPE tokenizer for transformers), ``data``
(dataset registry, MatBench, pre-training corpus), ``harvest`` (OPTIMADE), ``model`` / ``train``
(encoder and MLM pre-training), ``finetune`` (property heads, ``predict``), ``matbench_run``,
``baselines``, ``runner`` (papermill).

``cloudlib.predict(inputs, model=...)`` is ``cloudlib.finetune.predict``, imported on first use so that
``import cloudlib`` stays light (no torch) for SCOPE work.
"""
from .errors import CloudError
from .scope import scope_table, structure_to_scope

__version__ = "0.1.0"
__all__ = ["CloudError", "predict", "scope_table", "structure_to_scope", "__version__"]


def __getattr__(name):
    if name == "predict":
        from .finetune import predict

        return predict
    raise AttributeError(f"module 'cloudlib' has no attribute {name!r}")
