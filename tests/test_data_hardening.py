"""Silent data problems are errors: each has its own class and a message saying what to do."""

import numpy as np
import pandas as pd
import pytest

from vfl.core.errors import (
    ConfigError,
    DataFileError,
    DuplicateColumnError,
    EmptyDataFileError,
    FeatureMagnitudeError,
    IdAsFeatureError,
    LabelAsFeatureError,
    LabelValueError,
    MissingColumnError,
    NonFiniteLabelError,
    NonIntegerClassLabelError,
    PartyDataError,
)
from vfl.core.table import PartyTable, Standardizer
from vfl.core.tasks import Task


def frame(**extra):
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "x": [1.0, 2.0, 3.0, 4.0],
                       "z": [0.5, 1.0, 0.0, 3.0], "y": [0, 1, 0, 1]})
    return df.assign(**extra)


# -- huge feature values -----------------------------------------------------------------------
def test_values_too_large_to_standardize_are_refused_at_the_table():
    """Before: 1e154 squared overflows, std is inf and the column standardizes to all 0."""
    x = np.array([[1.0, 1e154], [2.0, -1e154], [3.0, 2e154]])
    with pytest.raises(FeatureMagnitudeError, match=r"\['big'\].*Rescale"):
        PartyTable.from_numpy(["a", "b", "c"], x, ["small", "big"])
    with pytest.raises(FeatureMagnitudeError, match="x"):
        PartyTable.from_frame(frame(x=[1e200, 1.0, 2.0, 3.0]), "id", label_column="y")
    # large but usable values are fine
    t = PartyTable.from_numpy(["a", "b", "c"], x / 1e10, ["small", "big"])
    z = Standardizer.fit(t.features).transform(t.features)
    assert np.isfinite(z).all() and np.abs(z[:, 1]).max() > 0.5


def test_standardizer_refuses_non_finite_moments_and_outputs():
    with pytest.raises(FeatureMagnitudeError, match=r"columns \[1\]"):
        Standardizer.fit(np.array([[0.0, 1e200], [1.0, -1e200]]))
    s = Standardizer.fit(np.array([[0.0], [1.0]]))
    with pytest.raises(FeatureMagnitudeError, match="non-finite"):
        s.transform(np.array([[np.inf]]))


# -- labels --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_labels_are_refused(bad):
    df = frame().astype({"y": float})
    df.loc[2, "y"] = bad
    with pytest.raises(NonFiniteLabelError, match="1 infinite"):
        PartyTable.from_frame(df, "id", label_column="y")
    with pytest.raises(NonFiniteLabelError):
        PartyTable.from_numpy(["a", "b"], np.zeros((2, 1)), labels=[0.0, bad])


def test_label_column_as_feature_is_refused():
    with pytest.raises(LabelAsFeatureError, match="'y'.*Remove it"):
        PartyTable.from_frame(frame(), "id", label_column="y", feature_columns=["x", "y"])


def test_id_column_as_feature_is_refused():
    df = frame(id=[10, 11, 12, 13])
    with pytest.raises(IdAsFeatureError, match="'id'"):
        PartyTable.from_frame(df, "id", label_column="y", feature_columns=["id", "x"])


def test_duplicate_feature_columns_are_refused():
    with pytest.raises(DuplicateColumnError, match=r"\['x'\]"):
        PartyTable.from_frame(frame(), "id", label_column="y", feature_columns=["x", "z", "x"])
    with pytest.raises(DuplicateColumnError):
        PartyTable.from_numpy(["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]]), ["c", "c"])


@pytest.mark.parametrize("labels", [[0, 1.5, 2], [0.0, 2.0000001, 1.0]])
def test_fractional_multiclass_labels_are_refused_not_truncated(labels):
    """Before: 1.5 became class 1 via astype(int32)."""
    with pytest.raises(NonIntegerClassLabelError, match="not whole numbers.*never rounded"):
        Task("multiclass", 3).check_labels(np.array(labels))
    assert issubclass(NonIntegerClassLabelError, ConfigError)  # old handlers still catch it
    assert issubclass(NonIntegerClassLabelError, PartyDataError)
    np.testing.assert_array_equal(
        Task("multiclass", 3).check_labels(np.array([0.0, 2.0, 1.0])), [0, 2, 1])


@pytest.mark.parametrize("task,labels,error", [
    (Task("multiclass", 3), [0.0, np.nan, 1.0], NonFiniteLabelError),  # NaN cast to garbage
    (Task("binary"), [0.0, np.inf], NonFiniteLabelError),
    (Task("regression"), [1.0, np.inf], NonFiniteLabelError),
    (Task("regression"), [1.0, 1e300], NonFiniteLabelError),  # overflows float32
    (Task("binary"), ["no", "yes"], LabelValueError),
])
def test_labels_that_do_not_fit_the_task(task, labels, error):
    with pytest.raises(error):
        task.check_labels(np.array(labels))


def test_nullable_integer_labels_still_work():
    labels = pd.Series([0, 1, 1], dtype="Int64").to_numpy()
    np.testing.assert_array_equal(Task("binary").check_labels(labels), [0.0, 1.0, 1.0])


# -- files ---------------------------------------------------------------------------------
def test_missing_csv_names_the_file(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(DataFileError, match="nowhere.csv.*does not exist"):
        PartyTable.from_csv(path, "id")
    with pytest.raises(DataFileError, match="is a folder"):
        PartyTable.from_csv(tmp_path, "id")


def test_empty_csv_names_the_file(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(EmptyDataFileError, match="empty.csv.*is empty"):
        PartyTable.from_csv(empty, "id")
    header = tmp_path / "header.csv"
    header.write_text("id,x,y\n")
    with pytest.raises(EmptyDataFileError, match="header.csv.*no rows"):
        PartyTable.from_csv(header, "id", label_column="y")


def test_unreadable_csv_names_the_file(tmp_path):
    path = tmp_path / "binary.csv"
    path.write_bytes(b"id,x\n\xff\xfe\x00\x81,1\n")
    with pytest.raises(DataFileError, match="binary.csv.*cannot be read"):
        PartyTable.from_csv(path, "id")


def test_parquet_problems_name_the_file(tmp_path):
    with pytest.raises(DataFileError, match="gone.parquet"):
        PartyTable.from_parquet(tmp_path / "gone.parquet", "id")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataFileError, match="corrupt.parquet.*cannot be read"):
        PartyTable.from_parquet(corrupt, "id")
    no_id = tmp_path / "no_id.parquet"
    frame().drop(columns="id").to_parquet(no_id)
    with pytest.raises(MissingColumnError, match="'id'"):  # before: a pandas KeyError
        PartyTable.from_parquet(no_id, "id", label_column="y")


def test_good_files_still_load(tmp_path):
    frame().to_csv(tmp_path / "t.csv", index=False)
    t = PartyTable.from_csv(tmp_path / "t.csv", "id", label_column="y")
    assert t.columns == ("x", "z") and list(t.labels) == [0, 1, 0, 1]
