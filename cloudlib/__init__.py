"""cloudlib: the thin library behind the cloud-companion notebooks (CLOUD, Xu, Zhu & Viswanathan).

The modules, bottom layer first (``pyproject.toml``'s import-linter contract enforces the order; see the
README's "Architecture"):

* foundation: ``errors``, ``paths``, ``io``, ``config`` (every setting and preset), ``registry`` (data files),
  ``scope`` (SCOPE strings), ``tokenizer``, ``debye`` (the Debye integrals), ``splits``, ``features``,
  ``scaling``, ``explorer``, ``reference``;
* data: ``matbench_data``, ``corpus``, ``inputs``, ``harvest`` (OPTIMADE), ``unconvbench``, ``phonons`` (CHGNet);
* models: ``model`` (encoder and heads), ``engine`` (the one training loop), ``baselines``;
* objectives: ``pretrain`` (MLM), ``finetune`` (a property), ``cloud_debye`` (Cv(T) heads), ``evaluation``;
* studies: ``predictor``, ``finetune_studies``, ``sweep``, ``debye_studies``, ``scope_analysis``,
  ``encoder_analysis``;
* interfaces: ``runner`` (papermill), ``cli`` (``python -m cloudlib``).

``cloudlib.predict(inputs, model=...)`` is :func:`cloudlib.predictor.predict`, imported on first use so that
``import cloudlib`` stays light (no torch) for SCOPE work.
"""

from .errors import CloudError
from .scope import scope_table, structure_to_scope

__version__ = "0.1.0"
__all__ = ["CloudError", "predict", "scope_table", "structure_to_scope", "__version__"]


def __getattr__(name):
    if name == "predict":
        from .predictor import predict

        return predict
    raise AttributeError(f"module 'cloudlib' has no attribute {name!r}")
