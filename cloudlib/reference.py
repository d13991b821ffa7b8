"""Published numbers this project compares itself with, as data: ``data/reference/<name>.csv``.

Every reference table carries a ``source`` column naming where each number comes from; notebooks read the
tables through :func:`load` and never type a paper's number themselves.

=================================  ===============================================================
name                               what
=================================  ===============================================================
``matbench_dielectric_mae``        MAE of CLOUD (paper), the leaderboard's best, RF-SCM/Magpie, Dummy
``scaling_exponents``              the paper's scaling-law exponents α (model size) and β (data size)
``cloud_debye_scores``             the paper's MAE/MAD of CLOUD-DEBYE and of direct regression at 300 K
``al2o3_cv_experimental``          NIST-JANAF heat capacity of corundum, 100-1200 K
``pretraining_gain``               the paper's relative MAE gain of pre-training on matbench_dielectric
=================================  ===============================================================
"""

from __future__ import annotations

import pandas as pd

from . import paths
from .errors import DataError


def load(name: str) -> pd.DataFrame:
    """The reference table ``name`` (see the module docstring); raises DataError when it is missing or has no
    ``source`` column."""
    path = paths.data_dir() / "reference" / f"{name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.csv"))
        raise DataError(f"no reference table {path.name}; known: {known}", name)
    table = pd.read_csv(path)
    if "source" not in table.columns or table["source"].isna().any():
        raise DataError("every reference number needs its source (a 'source' column)", name)
    return table


def value(name: str, key: str, column: str = "value", by: str = "name") -> float:
    """One number of a reference table: the ``column`` of the row whose ``by`` is ``key``."""
    table = load(name)
    rows = table[table[by] == key]
    if len(rows) != 1:
        raise DataError(f"expected one row with {by} == {key!r}, found {len(rows)}", name)
    return float(rows[column].iloc[0])
