#!/usr/bin/env python
"""Phonon heat capacities Cv(T) of a few hundred small crystals with CHGNet + phonopy (resumable).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/make_chgnet_cv.py --limit 600 --time-budget-min 55
    .venv/bin/python scripts/make_chgnet_cv.py --finalize          # write the committed table only

The committed table was made by the first command (one session, about 45 min on one core). The selection, the
calculation, the checkpoint and the table are :mod:`cloudlib.phonon_table`; this is its command line. The
defaults are the settings of the committed table (:data:`cloudlib.phonon_table.TABLE_PHONONS`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=600, help="number of candidates to select (default 600)")
    p.add_argument("--time-budget-min", type=float, default=None, help="stop cleanly after this many minutes")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads (default 1)")
    p.add_argument("--finalize", action="store_true", help="only write the committed table from the checkpoint")
    p.add_argument("--no-finalize", action="store_true", help="do not write the committed table at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-prim-atoms", type=int, default=8)
    p.add_argument("--per-system", type=int, default=2, help="max picks per chemical system (default 2)")
    p.add_argument("--max-force-atoms", type=int, default=3000, help="cost cap (see cloudlib.phonon_table)")
    p.add_argument("--supercell-min-length", type=float, default=10.0)
    p.add_argument("--max-supercell-atoms", type=int, default=160)
    p.add_argument("--mesh-length", type=float, default=60.0)
    p.add_argument("--displacement", type=float, default=0.03, help="A (see cloudlib.phonons)")
    p.add_argument("--imaginary-tol-thz", type=float, default=0.3)
    p.add_argument(
        "--max-imag-fraction",
        type=float,
        default=None,
        help="also call a crystal unstable when more than this share of its modes is imaginary "
        "(default: off, the rule of the committed table; cloudlib.phonons uses 0.02)",
    )
    p.add_argument("--out", default=None, help="output folder (default data/chgnet_cv)")
    return p.parse_args(argv)


def table_settings(args):
    """The :class:`cloudlib.phonon_table.TableSettings` the arguments name."""
    from cloudlib.phonon_table import TableSettings, with_overrides

    return with_overrides(
        TableSettings(),
        limit=args.limit,
        seed=args.seed,
        max_prim_atoms=args.max_prim_atoms,
        per_system=args.per_system,
        max_force_atoms=args.max_force_atoms,
        supercell_min_length=args.supercell_min_length,
        max_supercell_atoms=args.max_supercell_atoms,
        mesh_length=args.mesh_length,
        displacement=args.displacement,
        imaginary_tol_thz=args.imaginary_tol_thz,
        max_imag_fraction=args.max_imag_fraction,
    )


def main(argv=None) -> int:
    args = _args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before numpy / torch load
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cloudlib import phonon_table

    settings = table_settings(args)

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    if not args.finalize:
        phonon_table.run(settings, threads=args.threads, time_budget_min=args.time_budget_min, log=log)
    if args.finalize or not args.no_finalize:
        phonon_table.finalize(settings, out=Path(args.out) if args.out else None, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
