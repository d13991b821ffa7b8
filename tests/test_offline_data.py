"""Offline data sets beyond matbench_dielectric (real files through the registry) and the ecif reader."""

from __future__ import annotations

import pytest
from conftest import need_call

from cloudlib import matbench_data, offline_data
from cloudlib.errors import DataError
from cloudlib.scope import as_structure, structure_to_scope


def test_jdft2d_partial_is_matbench_minus_fold0_test():
    df = need_call(offline_data.load_jdft2d_partial)
    assert len(df) == 508 and df.index.is_unique
    assert df["exfoliation_en"].notna().all() and (df["exfoliation_en"] > 0).all()
    folds = [need_call(matbench_data.matbench_split, "matbench_jdft2d", f) for f in range(5)]
    assert set(df.index).isdisjoint(folds[0][1])  # the 128 test ids of fold 0 are what is missing
    assert len(folds[0][1]) == 128 and len(df) + 128 == 636
    for f in range(1, 5):
        train, test = folds[f]
        assert set(test) <= set(df.index)  # folds 1-4: complete test sets
        present = len(set(train) & set(df.index))
        assert present == len(train) - 128 == 381  # every training row but fold 0's test ids
    s = structure_to_scope(as_structure(df["structure"].iloc[0]))  # the CIFs parse
    assert s.count("|") == 2


def test_jarvis_supercon_structures_and_targets():
    structures = need_call(offline_data.jarvis_structures, "jarvis_leaderboard/atomgen_dft_3d_Tc_supercon.json.zip")
    targets = need_call(offline_data.jarvis_targets, "jarvis_leaderboard/spp_dft_3d_Tc_supercon.json.zip")
    ids = {k for rows in structures.values() for k in rows}
    tc = {k: v for rows in targets.values() for k, v in rows.items()}
    assert len(ids) == 1056 and len(tc) == 616 and set(tc) <= ids
    assert {k: len(v) for k, v in targets.items()} == {"train": 556, "val": 30, "test": 30}
    assert min(tc.values()) >= 0
    first = next(iter(structures["train"].values()))
    assert "\\n" not in first and structure_to_scope(as_structure(first)).count("|") == 2  # newlines undone


def test_castelli_perovskites_cover_cdvae_split():
    splits = need_call(offline_data.jarvis_structures, "jarvis_leaderboard/atomgen_perov5_heat_ref.json.zip")
    assert {k: len(v) for k, v in splits.items()} == {"train": 11356, "val": 3787, "test": 3785}


def test_read_ecif_fields_and_errors():
    text = "<ID> (0)\nmb-x-001\n\n<CIF> (0)\ndata_x\n_cell 1\n\n<y> (0)\n1.5\n\n$$$$\n\n<ID> (1)\nmb-x-002\n\n<y> (1)\n2\n$$$$\n"
    df = offline_data.read_ecif(text)
    assert list(df["ID"]) == ["mb-x-001", "mb-x-002"] and df.loc[0, "CIF"] == "data_x\n_cell 1"
    assert df.loc[1, "y"] == "2" and df["CIF"].isna().iloc[1]
    with pytest.raises(DataError, match="record 0"):
        offline_data.read_ecif("stray text\n<ID> (0)\nx\n$$$$")
