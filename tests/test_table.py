import numpy as np
import pandas as pd
import pytest

from vfl.core.errors import (
    DuplicateIdError,
    LabelAtPassivePartyError,
    MissingIdError,
    MissingValuesError,
    NonNumericColumnError,
    SchemaMismatchError,
)
from vfl.core.table import PartyTable, Standardizer
from vfl.vertical.parties import PassiveParty


def frame():
    return pd.DataFrame({"id": ["a", "b", "c", "d"], "x": [1.0, 2.0, np.nan, 4.0],
                         "z": [np.nan, 1.0, np.nan, 3.0], "y": [0, 1, 0, 1]})


def test_missing_ids_are_an_error():
    with pytest.raises(MissingIdError, match="no identifier"):
        PartyTable.from_numpy(["a", None, "c"], np.zeros((3, 1)))
    with pytest.raises(MissingIdError):
        PartyTable.from_numpy(["a", "", "c"], np.zeros((3, 1)))


def test_duplicate_ids_are_an_error():
    with pytest.raises(DuplicateIdError, match="more than once"):
        PartyTable.from_numpy(["a", "b", "a"], np.zeros((3, 1)))


def test_nan_without_policy_names_columns_and_counts():
    with pytest.raises(MissingValuesError) as err:
        PartyTable.from_frame(frame(), "id", label_column="y")
    assert "x: 1" in str(err.value) and "z: 2" in str(err.value)
    assert "impute" in str(err.value)


def test_imputation_policies():
    t = PartyTable.from_frame(frame(), "id", label_column="y", impute="mean")
    assert np.isfinite(t.features).all()
    assert t.features[2, 0] == pytest.approx(7 / 3)
    assert t.imputed == {"x": 1, "z": 2}
    t = PartyTable.from_frame(frame(), "id", label_column="y",
                              impute={"x": "median", "z": "drop-rows"})
    assert list(t.ids) == ["b", "d"]
    with pytest.raises(MissingValuesError):
        PartyTable.from_frame(frame(), "id", impute={"x": "mean"})  # z has no policy


def test_non_numeric_columns_are_an_error():
    df = frame().assign(w=["u", "v", "w", "x"])
    with pytest.raises(NonNumericColumnError, match="w"):
        PartyTable.from_frame(df, "id", impute="zero")
    with pytest.raises(NonNumericColumnError):
        PartyTable.from_numpy(["a"], np.array([["x"]]))


def test_label_at_passive_party_is_an_error():
    t = PartyTable.from_frame(frame(), "id", label_column="y", impute="zero")
    with pytest.raises(LabelAtPassivePartyError, match="Only the active party"):
        PassiveParty("lab", t)
    PassiveParty("lab", t.without_labels())


def test_schema_mismatch():
    t = PartyTable.from_frame(frame(), "id", label_column="y", impute="zero")
    with pytest.raises(SchemaMismatchError, match="missing"):
        t.check_schema(("x", "z", "extra"))
    t.check_schema(("x", "z"))


def test_csv_and_parquet(tmp_path):
    df = frame().fillna(0.0)
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    a = PartyTable.from_csv(tmp_path / "t.csv", "id", label_column="y")
    b = PartyTable.from_parquet(tmp_path / "t.parquet", "id", label_column="y")
    np.testing.assert_array_equal(a.features, b.features)
    assert list(a.ids) == list(b.ids) == ["a", "b", "c", "d"]


def test_standardizer_handles_constant_columns():
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    s = Standardizer.fit(x)
    np.testing.assert_allclose(s.transform(x), [[-1.0, 0.0], [1.0, 0.0]])
