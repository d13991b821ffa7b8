"""cloudlib: the thin library behind the cloud-companion notebooks (CLOUD, Xu, Zhu & Viswanathan).

Modules: ``scope`` (SCOPE strings), ``tokenizer`` (SCOPE tokenizer for transformers), ``data``
(dataset registry, MatBench, pre-training corpus), ``harvest`` (OPTIMADE), ``runner`` (papermill).
"""
from .errors import CloudError
from .scope import scope_table, structure_to_scope

__version__ = "0.1.0"
__all__ = ["CloudError", "scope_table", "structure_to_scope", "__version__"]
