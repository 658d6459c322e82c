"""Data loading, validation and standardisation."""

import io
import os
import pickle
import re
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models import data
from models.data import (
    ArrayChoiceError,
    check_trajectory,
    check_trajectory_or_list,
    column_mean_sd,
    column_names,
    destandardize,
    far_dimensions,
    load_data,
    several_trajectories,
    standardize,
)

X = np.array([[0.0, 1.0], [1.5, -2.0], [3.0, 4.25], [-1.0, 0.5]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_npy_roundtrip_gives_float64(tmp_path, dtype):
    path = tmp_path / "x.npy"
    np.save(path, X.astype(dtype))
    out = load_data(path)
    assert out.dtype == np.float64 and out.shape == X.shape
    np.testing.assert_array_equal(out, X.astype(dtype).astype(np.float64))


def test_one_dimensional_series_is_one_column(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(5.0))
    assert load_data(str(path)).shape == (5, 1)


def test_npz_single_named_and_ambiguous(tmp_path):
    single = tmp_path / "single.npz"
    np.savez(single, data=X)
    np.testing.assert_array_equal(load_data(single), X)
    several = tmp_path / "several.npz"
    np.savez(several, train=X, test=2 * X)
    np.testing.assert_array_equal(load_data(several, key="test"), 2 * X)
    with pytest.raises(ValueError, match=r"holds 2 arrays \(train, test\); pass key="):
        load_data(several)
    with pytest.raises(ValueError, match=r"has no array 'val'; available: train, test"):
        load_data(several, key="val")
    with pytest.raises(ValueError, match=r"key='train' applies to .npz files only"):
        np.save(tmp_path / "x.npy", X)
        load_data(tmp_path / "x.npy", key="train")


@pytest.mark.parametrize(
    "text",
    [
        "0,1\n1.5,-2\n3,4.25\n-1,0.5\n",
        "x,y\n0,1\n1.5,-2\n3,4.25\n-1,0.5\n",
        "# a comment\nx y\n0 1\n1.5   -2\n\n3\t4.25\n-1 0.5\n",
        "0.0e0 1\n1.5 -2\n3 4.25\n-1 5e-1\n",
    ],
)
def test_csv_header_optional_comma_or_whitespace(tmp_path, text):
    path = tmp_path / "x.csv"
    path.write_text(text)
    np.testing.assert_array_equal(load_data(path), X)
    txt = tmp_path / "x.txt"
    txt.write_text(text)
    np.testing.assert_array_equal(load_data(txt), X)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("ragged.csv", "1,2\n3\n4,5\n", r"rows have different numbers of columns: line 2 has 1 co"),
        (
            "mixed.csv",
            "1,2,3\n4,5,6\n7 8 9\n",
            r"line 3 has 1 column, expected 3 \(as in line 1\); its values are separated by "
            r"spaces or tabs, the file's by commas: use one separator throughout\.",
        ),
        (
            "mixed.txt",
            "1 2 3\n" * 12 + "7,8,9\n",  # past the lines that decide the separator
            r"line 13 has 1 column, expected 3 \(as in line 1\); its values are separated by "
            r"commas, the file's by spaces or tabs",
        ),
        (
            "spaced.csv",
            "1 2\n3,4\n",
            r"non-numeric entry '1 2' in line 1; numbers separated by spaces or tabs, where other "
            r"lines use commas",
        ),
        ("words.csv", "a,b\n1,2\nc,3\n", r"non-numeric entry"),
        ("empty.csv", "# nothing\n\n", r"no data rows"),
        ("broken.npy", b"not a numpy file", r"cannot read .*broken.npy"),
        ("broken.npz", b"PK\x03\x04garbage", r"cannot read .*broken.npz"),
    ],
)
def test_malformed_files_give_value_errors_with_the_path(tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        load_data(path)
    assert str(path.name) in str(info.value)


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"load_data: cannot read .*obj.npy: it is an object"):
        load_data(path)
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps(X))
    with pytest.raises(ValueError, match=r"load_data: cannot read"):
        load_data(raw)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        (
            "text.npy",
            b"1,2\n3,4\n",
            r"text.npy: it is not a NumPy file \(it looks like text: rename",
        ),
        (
            "text.npz",
            b"x y\n1 2\n",
            r"text.npz: it is not a NumPy file \(it looks like text: rename",
        ),
        ("empty.npy", b"", r"empty.npy: it is empty \(0 bytes\), not a NumPy .npy file\.$"),
        (
            "binary.npy",
            b"\x00\x01garbage",
            r"it is not a NumPy .npy file \(it does not start as np",
        ),
        ("binary.npz", b"\x00\x01garbage", r"it is not a NumPy .npz file \(.* as np.savez writes"),
    ],
)
def test_numpy_suffix_with_other_content_is_named_by_its_first_bytes(
    tmp_path, name, content, match
):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        load_data(tmp_path / name)
    assert "pickle" not in str(info.value)  # NumPy's advice, which load_data cannot follow


def test_npz_without_arrays_is_refused_without_key_advice(tmp_path):
    np.savez(tmp_path / "empty.npz")
    for key in (None, "x"):
        with pytest.raises(ValueError, match=r"empty.npz: it holds no arrays; save the") as info:
            load_data(tmp_path / "empty.npz", key=key)
        assert not isinstance(info.value, ArrayChoiceError) and "key=" not in str(info.value)


def test_npz_members_that_are_no_arrays_are_not_counted(tmp_path):
    """A file zipped into an .npz beside its arrays (a readme) is no array: not listed, not
    loadable by key, and alone it leaves an archive without arrays (it raised a bare
    AttributeError on NumPy's raw bytes)."""
    with zipfile.ZipFile(tmp_path / "readme.npz", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match=r"readme.npz: it holds no arrays; save the"):
        load_data(tmp_path / "readme.npz")
    x = np.random.default_rng(0).standard_normal((20, 3))
    buffer = io.BytesIO()
    np.save(buffer, x)
    with zipfile.ZipFile(tmp_path / "both.npz", "w") as archive:
        archive.writestr("readme.txt", "hello")
        archive.writestr("x.npy", buffer.getvalue())
    np.testing.assert_array_equal(load_data(tmp_path / "both.npz"), x)
    with pytest.raises(ArrayChoiceError, match=r"it has no array 'readme.txt'; available: x\."):
        load_data(tmp_path / "both.npz", key="readme.txt")


def test_an_npy_header_claiming_more_than_memory_is_refused(tmp_path):
    """A damaged header claiming terabytes: NumPy's MemoryError becomes load_data's refusal
    naming the file."""
    with open(tmp_path / "huge.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)}
        )
        fh.write(bytes(64))
    with pytest.raises(ValueError, match=r"^load_data: cannot read .*huge.npy: .*\(a damaged h"):
        load_data(tmp_path / "huge.npy")


def test_missing_file_and_unsupported_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_data: no such file .*nope.npy") as info:
        load_data(tmp_path / "nope.npy")
    assert isinstance(info.value, ValueError)  # as every other refusal of load_data
    with pytest.raises(ValueError, match=r"unsupported file type '.mat'.*supported: .npy"):
        load_data(tmp_path / "x.mat")
    with pytest.raises(TypeError, match=r"load_data: path must be a str or Path"):
        load_data(3)


def test_validation_reports_first_bad_value(tmp_path):
    bad = X.copy()
    bad[2, 1] = np.nan
    bad[3, 0] = np.inf
    path = tmp_path / "bad.npy"
    np.save(path, bad)
    with pytest.raises(ValueError, match=r"2 NaN/inf value\(s\); the first is nan at row 2, col"):
        load_data(path)


def test_validation_shape_steps_constant_and_kind(tmp_path):
    cases = [
        (np.zeros((2, 2, 2)), ValueError, r"must be 2-D of shape \(T, N\); got shape \(2, 2, 2\)"),
        (np.column_stack([X[:, 0], np.ones(4)]), ValueError, r"constant in column\(s\) \[1\]"),
        (X > 0, TypeError, r"must be a real numeric array; got dtype bool"),
        (X + 1j, TypeError, r"got dtype complex128"),
    ]
    for i, (arr, exc, match) in enumerate(cases):
        path = tmp_path / f"c{i}.npy"
        np.save(path, arr)
        with pytest.raises(exc, match=match):
            load_data(path)
    path = tmp_path / "short.npy"
    np.save(path, X)
    with pytest.raises(ValueError, match=r"short.npy has 4 time steps; at least 201 are needed"):
        load_data(path, min_steps=201)
    for too_few in (0, 1):  # one step was refused anyway, as constant or as one row
        with pytest.raises(ValueError, match=rf"load_data: min_steps must be >= 2; got {too_few}"):
            load_data(path, min_steps=too_few)
    with pytest.raises(TypeError, match=r"load_data: min_steps must be an int; got float"):
        load_data(path, min_steps=2.0)


def test_check_trajectory_allows_constant_when_asked():
    flat = np.ones((3, 2))
    assert check_trajectory(flat, "f", constant=True) is not None
    with pytest.raises(ValueError, match=r"f: y is constant"):
        check_trajectory(flat, "f", name="y")
    with pytest.raises(ValueError, match=r"f: x has no dimensions"):
        check_trajectory(np.zeros((3, 0)), "f")
    with pytest.raises(ValueError, match=r"^f: x is not an array \(nested sequences"):
        check_trajectory([[1.0, 2.0], [3.0]], "f")
    with pytest.raises(
        ValueError, match=r"^f: y is constant in column\(s\) \[0, 1\] \(.*\); f needs variation\.$"
    ):
        check_trajectory(flat, "f", name="y", constant_reason="f needs variation.")


def test_a_standardize_result_is_refused_naming_its_first_element():
    """(x_std, mean, sd) where one trajectory is expected: not 'ragged nested sequences' but
    the slip, and its fix; a tuple of other shapes is read as an array_like, as before."""
    with pytest.raises(
        TypeError,
        match=r"^f: x must be an array; got a tuple of a \(4, 2\) array and two \(2,\) arrays, "
        r"as models\.standardize returns; pass its first element \(x_std, mean, sd = "
        r"standardize\(x\)\)\.$",
    ):
        check_trajectory(standardize(X), "f")
    rows = (X[0], X[1], X[2])
    np.testing.assert_array_equal(check_trajectory(rows, "f"), X[:3])


finite_data = hnp.arrays(
    np.float64,
    st.tuples(st.integers(2, 30), st.integers(1, 4)),
    elements=st.floats(-1e3, 1e3, allow_nan=False),
)


@given(finite_data)
def test_standardize_roundtrip(x):
    assume(np.all(x.std(axis=0) > 1e-3 * (1 + np.abs(x).max())))
    z, mean, sd = standardize(x)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1, rtol=1e-9)
    np.testing.assert_allclose(destandardize(z, mean, sd), x, rtol=1e-9, atol=1e-9)


def test_standardize_near_the_largest_float_does_not_overflow():
    """Columns of magnitude near 1.8e308 are standardised and mapped back without the
    overflow of x - mean (which gave -inf); other columns keep the plain formula's bits."""
    big = np.array([[1.7e308, -1.7e308], [-1.7e308, 1.7e308], [1.7e308, 1.7e308]])
    x = np.column_stack([big, X[:3, :1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either
        z, mean, sd = standardize(x)
        back = destandardize(z, mean, sd)
    root2 = np.sqrt(2.0)
    np.testing.assert_allclose(z[:, :2], [[1 / root2, -root2], [-root2, 1 / root2],
                                          [1 / root2, 1 / root2]], rtol=1e-14)  # fmt: skip
    np.testing.assert_allclose(back, x, rtol=1e-14)
    assert np.array_equal(z[:, 2], (x[:, 2] - mean[2]) / sd[2])
    assert np.array_equal(back[:, 2], z[:, 2] * sd[2] + mean[2])
    # a shift of 2 reference sds at that scale is near, not far (x_mean - mean overflowed)
    shifted = 1e308 + 5e307 * np.array([[1.0], [-1.0]])
    assert far_dimensions(shifted, np.array([-1e308]), np.array([1e308]))[0].size == 0


def test_standardize_takes_the_moments_once(monkeypatch):
    calls = []
    moments = data.column_mean_sd
    monkeypatch.setattr(data, "column_mean_sd", lambda x: calls.append(1) or moments(x))
    standardize(X)
    assert len(calls) == 1


def test_standardize_rejects_constant_dimension():
    with pytest.raises(ValueError, match=r"standardize: x is constant in column\(s\) \[0\]"):
        standardize(np.column_stack([np.ones(5), np.arange(5.0)]))


def test_destandardize_validation():
    with pytest.raises(ValueError, match=r"destandardize: expected x_std of shape \(\.\.\., N\)"):
        destandardize(np.zeros((3, 2)), np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match=r"sd must be finite and > 0"):
        destandardize(np.zeros((3, 2)), np.zeros(2), np.array([1.0, 0.0]))
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match=r"^destandardize: mean must be finite; got \["):
            destandardize(np.zeros((3, 2)), np.array([bad, 0.0]), np.ones(2))
    np.testing.assert_array_equal(
        destandardize(np.ones((2, 3, 2)), np.array([1.0, 2.0]), np.array([2.0, 3.0]))[1, 2],
        [3.0, 5.0],
    )


@pytest.mark.parametrize(
    "x, several",
    [
        ([X, X[:3]], True),
        ((X, X[:3].tolist()), True),  # a trajectory as nested lists counts as one
        ([X.tolist(), X[:3].tolist()], True),
        (X.tolist(), False),  # one trajectory, a list of rows
        ([X[0], X[1]], False),  # rows as arrays: one trajectory
        (X, False),
        ([], False),
        ([X, [[1.0], [2.0, 3.0]]], False),  # a ragged item: read as one (refused) trajectory
    ],
)
def test_several_trajectories_are_a_list_of_2d_array_likes(x, several):
    assert several_trajectories(x) is several


@pytest.mark.parametrize(
    "x, n_obs, fix",
    [
        ([np.ones(5), np.ones(4)], None, "pass [s[:, None] for s in x] for series of one "
         "variable each."),  # rows have one length: ragged 1-D arrays are series
        ([np.ones(5), np.ones(5)], 1, "pass [s[:, None] for s in x] for series of one "
         "variable each."),
        ([np.ones(5), np.ones(5)], 2, "pass np.column_stack(x) for the 2 variables of one "
         "trajectory."),
        ((np.ones(5), np.ones(4)), 3, "pass each as a (T_k, 3) array."),
    ],
)  # fmt: skip
def test_a_list_of_one_dimensional_series_is_refused_with_the_fix(x, n_obs, fix):
    with pytest.raises(ValueError) as err:
        check_trajectory_or_list(x, "f", "x", n_obs)
    kind = type(x).__name__
    assert str(err.value).startswith(f"f: x is a {kind} of 2 one-dimensional arrays (of ")
    assert str(err.value).endswith(f"several trajectories are 2-D, (T_k, N) each: {fix}")


@pytest.mark.parametrize(
    "x, n_obs",
    [
        ([X[0], X[1], X[2]], 2),  # the rows of one trajectory, as arrays
        ([X[0], X[1]], None),  # rows or series: check_trajectory decides (2 steps of 2)
        ([np.ones(5), np.ones(5), np.ones(5)], 2),  # the wrong width: refused by N, not here
        ([np.ones(5)], 1),  # one series: check_trajectory hints at x.T
    ],
)
def test_rows_as_arrays_are_left_to_check_trajectory(x, n_obs):
    check_trajectory_or_list(x, "f", "x", n_obs)


def test_several_bad_arguments_are_reported_together():
    with pytest.raises(TypeError) as err:
        load_data(3, key=4, min_steps=0)
    assert str(err.value) == (
        "load_data: path must be a str or Path; got int. key must be a str (an array name); got "
        "int. min_steps must be >= 2; got 0."
    )
    with pytest.raises(ValueError, match=r"^destandardize: expected x_std .* sd must be finite"):
        destandardize(np.zeros((3, 2)), np.zeros(3), -np.ones(2))
    with pytest.raises(TypeError, match=r"^destandardize: x_std must be real .* sd must be real"):
        destandardize(np.array(["a"]), np.zeros(1), np.array(["x"]))


def test_csv_with_utf8_byte_order_mark_keeps_the_first_row(tmp_path):
    for text in ("0,1\n1.5,-2\n3,4.25\n-1,0.5\n", "x,y\n0,1\n1.5,-2\n3,4.25\n-1,0.5\n"):
        path = tmp_path / "excel.csv"
        path.write_text(text, encoding="utf-8-sig")  # Excel's "CSV UTF-8"
        np.testing.assert_array_equal(load_data(path), X)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1.0,2.0\n3.0,4.0\n5.0,6.5\n7.0\n", r"line 4 has 1 column, expected 2 \(as in line 1\)"),
        ("x,y\n\n# note\n1,2\n3,4,5\n", r"line 5 has 3 columns, expected 2 \(as in line 4\)"),
        ("1 2\n3 4\n5\n", r"line 3 has 1 column, expected 2"),
        ("a,b\n1,2\n3,x\n", r"non-numeric entry 'x' in line 3"),
        ("a,b\n", r"has a header but no data rows"),
        # a first line with numbers is data even when an entry is missing: not a header
        ("1.5,NA\n0,1\n1.5,-2\n", r"non-numeric entry 'NA' in line 1"),
        ("x,y\n1.5;2.0\n2.5;3.0\n", r"'1.5;2.0' in line 2; the values look separated by ';'"),
        ("1.5,2.0,\n2.5,3.0,\n", r"'' in line 1; an empty entry: .* trailing or doubled comma"),
        ("1_0,2\n3,4\n", r"non-numeric entry '1_0' in line 1"),
        ("x,y\n# c\n1,2\n3,4\n5,6,7\n", r"line 5 has 3 columns, expected 2 \(as in line 3\)"),
    ],
)
def test_csv_errors_name_the_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"load_data: cannot read .*bad\.csv: .*{match}"):
        load_data(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # pandas DataFrame.to_csv(index=False) of unnamed float columns: a header
        ("0,1\n0.0,1.0\n1.5,-2.0\n3.0,4.25\n-1.0,0.5\n", X),
        ("0,1\n0.0,1.0\n1.5,-2.0\n3.0,4.25\n-1.0,5e-01\n", X),
        ("0\n0.0\n1.5\n3.0\n", X[:3, :1]),
        # a first row 0..N-1 above rows with integer entries is data
        ("0,1\n1.5,-2\n3,4.25\n-1,0.5\n", X),
        ("0,1\n1,2\n", np.array([[0.0, 1.0], [1.0, 2.0]])),
        # other integer rows are data
        ("1,2\n0.5,1.5\n", np.array([[1.0, 2.0], [0.5, 1.5]])),
        ("1,0\n0.5,1.5\n", np.array([[1.0, 0.0], [0.5, 1.5]])),
        # only the ten lines after the first decide: integers further down do not
        ("0,1\n" + "0.5,1.5\n" * 10 + "2,3\n", np.array([[0.5, 1.5]] * 10 + [[2.0, 3.0]])),
    ],
)
def test_csv_integer_column_names_of_pandas_are_a_header(tmp_path, text, expected):
    path = tmp_path / "pandas.csv"
    path.write_text(text)
    np.testing.assert_array_equal(load_data(path), expected)


def test_npz_content_must_match_the_suffix_and_archives_are_closed(tmp_path, monkeypatch):
    opened = []  # held here, so only load_data can have closed them (not garbage collection)
    enter = np.lib.npyio.NpzFile.__enter__
    monkeypatch.setattr(
        np.lib.npyio.NpzFile, "__enter__", lambda self: opened.append(self) or enter(self)
    )
    zipped = tmp_path / "zipped.npy"
    with open(zipped, "wb") as fh:
        np.savez(fh, x=X)
    with pytest.raises(ValueError, match=r"zipped.npy: it is an .npz archive .*rename it to .npz"):
        load_data(zipped)
    plain = tmp_path / "plain.npz"
    with open(plain, "wb") as fh:
        np.save(fh, X)
    with pytest.raises(ValueError, match=r"plain.npz: it is an .npy file .*rename it to .npy"):
        load_data(plain)
    several = tmp_path / "several.npz"
    np.savez(several, train=X, test=2 * X)
    with pytest.raises(ArrayChoiceError) as info:
        load_data(several)
    assert info.value.names == ["train", "test"]
    copy = pickle.loads(pickle.dumps(info.value))  # as multiprocessing sends it to the caller
    assert str(copy) == str(info.value) and copy.names == ["train", "test"]
    np.testing.assert_array_equal(load_data(several, key="train"), X)
    # the archive named .npy is refused by its first bytes, before NumPy opens it
    assert len(opened) == 2 and all(npz.zip is None for npz in opened)
    with pytest.raises(TypeError, match=r"load_data: key must be a str \(an array name\); got int"):
        load_data(several, key=1)


@pytest.mark.parametrize(
    "text",
    [
        ",0,1\n0,0.5,1.0\n1,1.5,-2.0\n2,3.0,4.25\n",  # DataFrame.to_csv() of unnamed columns
        ",x,y\n0,0.5,1.0\n1,1.5,-2.0\n2,3.0,4.25\n",  # ... of named columns
        '"","x","y"\n"1",0.5,1.0\n"2",1.5,-2.0\n"3",3.0,4.25\n',  # R's write.csv()
    ],
)
def test_row_index_column_is_refused(tmp_path, text):
    path = tmp_path / "indexed.csv"
    path.write_text(text)
    with pytest.raises(
        ValueError, match=r"row index .*pandas: to_csv\(index=False\); R: write.csv\(x, row"
    ):
        load_data(path)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        (
            "three.csv",
            "x,y,z\n0,1\n1.5,-2\n",
            r"header \(line 1, read as 'x,y,z'\) has 3 names "
            r"but the data have 2 columns \(line 2, read as '0,1'\); give one name per column",
        ),
        # pandas to_csv(sep="\t") with its index: the empty first name is lost between tabs
        (
            "pandas.txt",
            "\tx\ty\n0\t0.5\t1.0\n1\t1.5\t-2.0\n",
            r"has 2 names but the data "
            r"have 3 columns .*; the first column \(0, 1, \.\.\.\) looks like a row index",
        ),
        # R's write.table(): quoted names, no name for the row names
        ("r.txt", '"x" "y"\n"1" 0.5 1.0\n"2" 1.5 -2.0\n', r"has 2 names .* 3 columns"),
        ("semicolon.csv", "a;b\n1.5,2.5\n3.1,4.2\n", r"1 name .* separated by ';'"),
        ("comment.csv", "x # m,y\n0,1\n1.5,-2\n", r"read as 'x'\) has 1 name"),
    ],
)
def test_header_needs_one_name_per_column(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_data(path)


def _error(path, **kwargs) -> str:
    """The message of the ValueError that ``load_data(path, **kwargs)`` raises."""
    with pytest.raises(ValueError) as info:
        load_data(path, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "x\ty\n0.3\t0.5\t1.0\n7\t1.5\t-2.0\n",  # a first column of measurements
        "x y\n5 0.5 1.0\n3 1.5 -2.0\n4 3.0 4.25\n",  # integers, not counting up by one
        "x y\n0 0.5 1.0\n",  # one data line: too few to tell
    ],
)
def test_header_one_name_short_is_a_row_index_only_above_one(tmp_path, text):
    path = tmp_path / "short.txt"
    path.write_text(text)
    data_line = text.splitlines()[1]
    assert _error(path).endswith(
        f"the header (line 1, read as {text.splitlines()[0]!r}) has 2 names but the data have "
        f"3 columns (line 2, read as {data_line!r}); give one name per column or remove the "
        f"header line."
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('"x" "y"\n"1" 0.5 1.0\n"2" 1.5 -2.0\n"3" 3.0 4.25\n', "1, 2, 3"),  # R write.table()
        ("x y\n100 0.5 1.0\n101 1.5 -2.0\n", "100, 101"),  # a sliced pandas index
        ("x y\n0 0.5 1.0\n10 1.5 -2.0\n20 3.0 4.25\n", "0, 10, 20"),  # a subsampled one
    ],
)
def test_header_one_name_short_above_a_counting_column_is_a_row_index(tmp_path, text, shown):
    path = tmp_path / "indexed.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"the first column \({shown}, \.\.\.\) looks like a row"):
        load_data(path)


def test_header_and_data_lines_are_shown_shortened(tmp_path):
    names = ",".join(f"name{i}" for i in range(30))
    path = tmp_path / "wide.csv"
    path.write_text(f"{names}\n0.5,1.0\n1.5,-2.0\n")
    assert f"read as {names[:57] + '...'!r}) has 30 names" in _error(path)


def test_header_names_separated_by_whitespace_over_comma_data(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("x y\n0,1\n1.5,-2\n3,4.25\n-1,0.5\n")
    np.testing.assert_array_equal(load_data(path), X)


def test_quoted_entries_are_read_like_pandas_does(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('"x","y"\n"0","1"\n"1.5","-2"\n3,"4.25"\n"-1",0.5\n')  # QUOTE_ALL
    np.testing.assert_array_equal(load_data(path), X)
    path.write_text('"0" "1"\n"1.5" "-2"\n3 "4.25"\n"-1" 0.5\n')
    np.testing.assert_array_equal(load_data(path), X)
    path.write_text('x,y\n0, "1"\n1.5,-2\n3,4.25\n')  # a quote after a space is text
    with pytest.raises(ValueError, match=r"""'"1"' in line 2; quotes count only around a whole"""):
        load_data(path)
    path.write_text('x,y\n0,"1,5"\n1.5,-2\n3,4.25\n')
    with pytest.raises(ValueError, match=r"'1,5' in line 2; a decimal comma: use '.'"):
        load_data(path)


SEMI = "a semicolon-separated CSV"


@pytest.mark.parametrize(
    ("text", "what", "line", "sep", "header", "shape"),
    [
        ("0,05439;-0,12;1,5\n0,1;0,2;0,3\n1,2;3,4;5,6\n-1;2;3,25\n", SEMI, 1, "';'",
         ", header=None", (4, 3)),
        ("a;b;c\n0,05439;-0,12;1,5\n0,1;0,2;0,3\n1,2;3,4;5,6\n-1;2;3,25\n", SEMI, 2, "';'", "",
         (4, 3)),
        ('"a";"b";"c"\n"0,05439";"-0,12";"1,5"\n0,1;0,2;0,3\n1,2;3,4;5,6\n-1;2;3,25\n', SEMI, 2,
         "';'", "", (4, 3)),
        ("# exported\n\n0,05439 ; -0,12 ; 1,5\n0,1;0,2;0,3\n1,2;3,4;5,6\n-1;2;3,25\n", SEMI, 3,
         "';'", ", header=None", (4, 3)),
        # a German one-column export: read with ',' between columns it was (6, 2) integers
        ("21,5\n21,75\n22,05\n-0,25\n20,5\n19,95\n", "one column of numbers", 3, "';'",
         ", header=None", (6, 1)),
        ("Temperatur\n21,5\n21,75\n22,05\n", "one column of numbers", 4, "';'", "", (3, 1)),
        # (with '.' for ',' its first line, 0, reads as a pandas header: README, text files)
        ("0\n21,5\n22,05\n", "one column of numbers", 3, "';'", ", header=None", None),
        ("0\t0\n0,5\t1,5\n2,5\t3,25\n", "numbers separated by spaces or tabs", 2, "r'\\s+'",
         ", header=None", (3, 2)),
        ("1\t0,5\n2,5\t1,5\n3,25\t0,75\n", "numbers separated by spaces or tabs", 1,
         "r'\\s+'", ", header=None", (3, 2)),
        ("a\tb\n1\t0,5\n2,5\t1,5\n", "numbers separated by spaces or tabs", 2, "r'\\s+'", "",
         (2, 2)),
    ],
)  # fmt: skip
def test_decimal_commas_are_named_with_the_conversion(
    tmp_path, text, what, line, sep, header, shape
):
    """Separated by ';' or whitespace, or one column of them (which were read as more columns,
    one-column files silently, or refused for another reason: "use one separator
    throughout", "remove the header line"); the pandas call reads a first row of data."""
    path = tmp_path / "export.csv"
    path.write_text(text)
    message = _error(path)
    assert message.startswith(
        f"load_data: cannot read {path}: the file looks like {what} with decimal commas "
        f"(line {line}: "
    ), message
    assert f"pandas.read_csv(path, sep={sep}, decimal=',', comment='#'{header})" in message
    assert "05439;-0'" not in message  # the line, not a fragment of it
    if shape is not None:
        path.write_text(text.replace(",", ".").replace(";", ","))  # the message's other fix
        assert load_data(path).shape == shape


def test_one_column_of_decimal_commas_is_named_past_the_first_lines(tmp_path):
    """A series written with two decimals whose first value with a leading-zero decimal
    (``20,01``) comes after the lines that decide the layout: it was read as two integer
    columns (a third of such files)."""
    values = "19,76 19,36 19,29 19,41 19,55 19,62 19,71 19,83 19,94 19,88 19,72 19,65 19,58 20,01"
    values = values.split()
    path = tmp_path / "logger.csv"
    path.write_text("\n".join(values) + "\n")
    assert all("," in v and not v.split(",")[1].startswith("0") for v in values[:-1])
    assert "one column of numbers with decimal commas (line 14: '20,01')" in _error(path)


def test_comma_separated_integers_are_still_two_columns(tmp_path):
    path = tmp_path / "counts.csv"
    for text in (
        "1,2\n4,4\n5,6\n",
        "0,5\n2,7\n3,9\n",
        "2, 2,3\n4,5, 6\n7,1,1\n",
        "-0,3\n1,2\n3,5\n-2,4\n",  # np.round's -0.0, as %g writes it
    ):
        path.write_text(text)
        assert load_data(path).shape[0] == text.count("\n")


def test_semicolons_with_decimal_commas_and_a_trailing_semicolon_are_named(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("0,05439;-0,12;1,5;\n0,1;0,2;0,3;\n")
    assert "looks like a semicolon-separated CSV with decimal commas (line 1: " in _error(path)


def test_semicolons_without_decimal_commas_keep_the_separator_hint(tmp_path):
    path = tmp_path / "semi.csv"
    for text in ("1.5;2.0\n2.5;3.0\n", "1,5;NA\n2,5;NA\n"):  # '.' decimals; not all numbers
        path.write_text(text)
        with pytest.raises(
            ValueError, match=r"in line \d; the values look separated by ';'"
        ) as info:
            load_data(path)
        assert "decimal commas" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "array", "shape"),
    [
        ("ragged.npy", [np.arange(3.0), np.arange(2.0)], r"\(2,\)"),
        ("gaps.npy", [[1.0, None], [2.0, 3.0]], r"\(2, 2\)"),
    ],
)
def test_object_arrays_are_named_with_the_fix(tmp_path, name, array, shape):
    path = tmp_path / name
    np.save(path, np.array(array, dtype=object), allow_pickle=True)
    message = _error(path)
    assert re.match(
        rf"load_data: cannot read .*{name}: it is an object array \(dtype object, shape {shape}\)"
        r", .*needs pickle, which load_data does not do .*Save a float array instead: "
        r"np.save\(path, np.asarray\(x, dtype=float\)\)",
        message,
    )
    assert "allow_pickle" not in message  # NumPy's advice, which load_data cannot follow
    assert ("separate trajectories" in message) == (name == "ragged.npy")


def test_object_arrays_in_npz_are_named_with_the_fix(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, train=X.astype(object), **{"test set": X}, allow_pickle=True)
    with pytest.raises(ValueError, match=r"its array 'train' is an object array \(dtype object, "):
        load_data(path, key="train")
    np.testing.assert_array_equal(load_data(path, key="test set"), X)
    np.savez(path, **{"test set": X.astype(object)}, allow_pickle=True)
    with pytest.raises(ValueError, match=r"np.savez\(path, \*\*\{'test set': np.asarray\(x, dt"):
        load_data(path)
    np.savez(path, **{"class": X.astype(object)}, allow_pickle=True)  # a keyword: no class=...
    with pytest.raises(ValueError, match=r"np.savez\(path, \*\*\{'class': np.asarray"):
        load_data(path)
    np.save(tmp_path / "fixed.npy", np.asarray(X.astype(object), dtype=float))  # the fix
    np.testing.assert_array_equal(load_data(tmp_path / "fixed.npy"), X)


def test_a_content_error_names_the_file_by_its_path(tmp_path):
    """Sessions in folders of their own often share file names (a/run.npy, b/run.npy): the
    message names the path given, not its last part."""
    x = np.random.default_rng(0).standard_normal((20, 2))
    x[5, 1] = np.nan
    path = tmp_path / "b" / "run.npy"
    path.parent.mkdir()
    np.save(path, x)
    with pytest.raises(ValueError, match=rf"^load_data: the data in {re.escape(str(path))} "):
        load_data(path)


@pytest.mark.parametrize(
    ("column", "shown"),
    [
        (np.arange(30.0), r"0, 1, \.\.\., 29 in equal steps of 1"),
        (np.arange(1.0, 31.0), r"1, 2, \.\.\., 30 in equal steps of 1"),
        (100.0 + np.arange(30), r"100, 101, \.\.\., 129"),  # a sliced index
        (np.round(0.01 * np.arange(30), 2), r"0, 0.01, \.\.\., 0.29 in equal steps of 0.01"),
        (1e4 + 1e-3 * np.arange(30), r"10000, 10000.001, \.\.\., 10000.029"),  # time offset
        (5.0 - 0.5 * np.arange(30), r"5, 4.5, \.\.\., -9.5 in equal steps of -0.5"),
    ],
)
def test_a_first_column_in_equal_steps_is_refused(tmp_path, column, shown):
    data = np.column_stack([column, np.random.default_rng(0).standard_normal((30, 2))])
    path = tmp_path / "indexed.csv"
    np.savetxt(path, data, delimiter=",", header="t,x,y", comments="", fmt="%.10g")
    match = rf"first column of the data in {re.escape(str(path))} runs {shown}.*: a row index or "
    with pytest.raises(ValueError, match=match):
        load_data(path)
    np.save(tmp_path / "indexed.npy", data.astype(np.float32))  # rounded to float32
    with pytest.raises(ValueError, match=r"row index or time column, not a measured variable"):
        load_data(tmp_path / "indexed.npy")
    np.save(tmp_path / "short.npy", data[:2, :2])  # two steps are too few to tell
    assert load_data(tmp_path / "short.npy").shape == (2, 2)


@pytest.mark.parametrize("where", [1, 2])
def test_a_later_column_in_equal_steps_is_refused_from_ten_steps(tmp_path, where):
    """A time column written last (``x, y, t``) or between: it was trained on as a ramp. Below
    ten steps a column ``1, 2, 3`` of a small table is data."""
    rng = np.random.default_rng(0)
    data = np.insert(rng.standard_normal((50, 2)), where, 0.01 * np.arange(50), axis=1)
    path = tmp_path / "timed.csv"
    np.savetxt(path, data, delimiter=",", fmt="%.10g")
    match = rf"^load_data: column {where} of the data in .* runs 0, 0\.01, \.\.\., 0\.49 in "
    with pytest.raises(ValueError, match=match + r"equal steps of 0\.01: a row index or time co"):
        load_data(path)
    np.save(tmp_path / "short.npy", data[:9])
    assert load_data(tmp_path / "short.npy").shape == (9, 3)


def _first_column_written(tmp_path, column, fmt):
    """A .csv of ``column`` written with ``fmt`` beside two random columns, full precision."""
    other = np.random.default_rng(0).normal(size=(len(column), 2))
    rows = [f"{fmt % t},{a:.17g},{b:.17g}" for t, (a, b) in zip(column, other, strict=True)]
    path = tmp_path / "timed.csv"
    path.write_text("t,x,y\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("fmt", "dt", "T"),
    [("%.4f", 1 / 30, 200), ("%g", 1 / 30, 200), ("%g", 1 / 256, 200), ("%.0f", 1000 / 30, 200),
     ("%g", 1 / 30, 100_000)],  # %g keeps 2 decimals beyond t = 1000: 0.01 against 0.033
)  # fmt: skip
def test_a_time_column_rounded_as_written_is_refused(tmp_path, fmt, dt, T):
    """Time stamps printed with a few decimals (MATLAB's fprintf, loggers) are equal steps up
    to the rounding of the text: they passed as a measured variable, a ramp to train on."""
    path = _first_column_written(tmp_path, dt * np.arange(T), fmt)
    with pytest.raises(ValueError, match=r"row index or time column, not a measured variable"):
        load_data(path)


@pytest.mark.parametrize(
    ("column", "fmt"),
    [
        (0.1 * np.arange(3000) + np.random.default_rng(1).normal(0, 0.005, 3000), "%.2f"),
        (20 + np.cumsum(np.random.default_rng(2).normal(0, 0.01, 3000)), "%.1f"),  # slow drift
        (np.cumsum(np.random.default_rng(3).poisson(5, 3000)), "%d"),  # cumulative counts
        (0.1 * (np.arange(3000) % 50), "%.1f"),  # a sawtooth
    ],
    ids=["noisy-ramp", "slow-drift", "cumulative-counts", "sawtooth"],
)
def test_measured_variables_rounded_as_written_are_data(tmp_path, column, fmt):
    """A ramp whose noise exceeds the rounding of its decimals (a few units of the last one)
    is data, as are coarsely rounded slow drifts, counts and sawtooths."""
    assert load_data(_first_column_written(tmp_path, column, fmt)).shape == (3000, 3)


@pytest.mark.parametrize(
    ("text", "line", "token"),
    [
        ("x,y\r\n0.5,1.5\r\n#N/A,2.5\r\n1.25,-0.5\r\n", 3, "#N/A"),  # a dropped row before
        ("x,y\n0.5,1.5\n2.5,#DIV/0!\n1.25,-0.5\n", 3, "#DIV/0!"),
        ('x y\n0.5 1.5\n2.5 "#VALUE!"\n1.25 -0.5\n', 3, "#VALUE!"),
    ],
)
def test_spreadsheet_error_values_are_refused_not_read_as_comments(tmp_path, text, line, token):
    """Excel writes a missing or failed cell as #N/A, #DIV/0!, ...: as a line's first entry
    its '#' started a comment, and the time step was silently dropped."""
    path = tmp_path / "sheet.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"line {line} holds the spreadsheet error value "
                       rf"'{re.escape(token)}' \(a missing or failed cell\)"):  # fmt: skip
        load_data(path)
    # a comment may mention one
    path.write_text("x,y # #N/A marks a gap\n0.5,1.5\n# #N/A\n2.5,0.25\n1.25,-0.5\n")
    assert load_data(path).shape == (3, 2)


@pytest.mark.parametrize("token", ["#ERROR!", "#FIELD!", "#GETTING_DATA", "#BUSY!"])
def test_newer_spreadsheet_error_values_are_refused(tmp_path, token):
    """Google Sheets' #ERROR! and Excel's newer error values start a comment too."""
    path = tmp_path / "sheet.csv"
    path.write_text(f"x,y\n0.5,1.5\n{token},0.25\n1.25,-0.5\n3.5,1\n")
    with pytest.raises(ValueError, match="line 3 holds the spreadsheet error value"):
        load_data(path)


def test_a_spreadsheet_error_after_a_byte_order_mark_is_refused(tmp_path):
    path = tmp_path / "sheet.csv"
    path.write_text("\ufeff#N/A,0.25\n0.5,1.5\n2.5,0.75\n1.25,-0.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 holds the spreadsheet error value '#N/A'"):
        load_data(path)


def test_a_missing_value_marker_gets_its_fix(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("x,y\n0.5,1.5\n2.5,NA\n1.25,-0.5\n")
    with pytest.raises(ValueError, match=r"non-numeric entry 'NA' in line 3; a missing-value "
                       r"marker: fill or interpolate the missing values\.$"):  # fmt: skip
        load_data(path)


@pytest.mark.parametrize("text", ["NA,NA\n1.5,2.5\n0.5,1.0\n", "NA\n1.5\n2.5\n", "- -\n1 2\n3 4\n"])
def test_a_first_line_of_missing_values_is_no_header(tmp_path, text):
    """R's ``write.table(col.names=FALSE)`` of ``c(NA, diff(x))``: the first row was dropped as
    a header named 'NA'."""
    path = tmp_path / "diffs.csv"
    path.write_text(text)
    assert "line 1 holds only missing-value markers (" in _error(path)


def test_windows_text_mode_line_ends_are_no_empty_lines(tmp_path):
    """``\\r\\r\\n``, as Python's csv.writer writes on Windows into a file opened without
    newline='' (and MATLAB's fprintf of '\\r\\n' in 'wt' mode): each is one line end, not
    a line end and an empty line."""
    path = tmp_path / "windows.csv"
    path.write_bytes(b"x\r\r\n1.5\r\r\n2.5\r\r\n3.5\r\r\n")
    assert load_data(path).shape == (3, 1)
    path.write_bytes(b"1 2\r\r\n4 4\r\r\n\r\r\n5 7\r\r\n")  # one separating line
    assert load_data(path).shape == (3, 2)
    path.write_bytes(b"1.5\r\r\n2.5\r\r\n\r\r\n3.5\r\r\n")
    assert "line 5 is empty between data lines" in _error(path)  # lines as Python counts them


def test_a_header_that_reads_like_a_marker_in_another_case_is_a_header(tmp_path):
    path = tmp_path / "sodium.csv"
    path.write_text("Na\n1.5\n2.5\n3.1\n")
    assert load_data(path).shape == (3, 1)


def test_empty_lines_that_are_gaps_or_block_separators_are_refused(tmp_path):
    """One empty line in a one-column file is a spreadsheet's empty cell; two in a row in any
    file separate gnuplot's blocks (several recordings). Both were joined silently; single
    empty lines between rows of several columns, and those around comments, stay spacing."""
    path = tmp_path / "gaps.csv"
    path.write_text("x\n1.5\n2.5\n  \n1.0\n3.0\n")
    assert "line 4 is empty between data lines, which in a one-column file marks a missing " in (
        _error(path)
    )
    path.write_bytes(b"1 2\r3 4\r\r\r5 7\r6 9\r")  # old Mac line ends
    assert "lines 3-4 are empty between data lines, as blocks of several recordings" in (
        _error(path)
    )
    for text in ("1.5\n2.5\n1.0\n\n\n", "\n\n1.5\n2.5\n3.5\n", "1 2\n4 4\n\n5 7\n",
                 "1 2\n\n# block\n\n4 4\n5 6\n"):  # fmt: skip
        path.write_text(text)
        assert load_data(path).shape[0] == 3, text


def test_series_that_are_not_in_equal_steps_are_data(tmp_path):
    rng = np.random.default_rng(1)
    t = np.arange(1000)
    for first in (
        0.01 * t + 1e-6 * rng.standard_normal(1000),  # a linear trend with noise
        rng.poisson(5.0, 1000).astype(float),  # integer counts
        np.where(t == 500, 501.0, t),  # an index with one entry off
    ):
        data = np.column_stack([first, rng.standard_normal(1000)])
        np.save(tmp_path / "x.npy", data)
        np.testing.assert_array_equal(load_data(tmp_path / "x.npy"), data)
    np.save(tmp_path / "flat.npy", np.column_stack([np.full(1000, 2.0), t]))
    with pytest.raises(ValueError, match=r"constant in column\(s\) \[0\] \(sd / max\|x\| = 0"):
        load_data(tmp_path / "flat.npy")


def test_csv_comments_and_whitespace_only_lines_are_skipped(tmp_path, monkeypatch):
    path = tmp_path / "x.csv"
    path.write_text("# run 3\nx,y # units\n0,1\n   \n1.5,-2 # note\n\t\n3,4.25\n  # c\n-1,0.5\n")
    np.testing.assert_array_equal(load_data(path), X)
    # NumPy's parser reads the data lines; the slow line-by-line scan is for real errors only
    monkeypatch.setattr(data, "_locate_bad_line", lambda *args: pytest.fail("scanned"))
    np.testing.assert_array_equal(load_data(path), X)


def test_csv_that_is_not_utf8_names_the_line_and_the_fix(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("x,y\n1.5,2\n2.5,3 # 20 \u00b0C\n3,1\n".encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"line 3 is not UTF-8 text \(byte 0xb0\); save the file as UTF-8"
    ):
        load_data(path)


def test_nan_in_a_text_file_is_reported_by_line(tmp_path):
    path = tmp_path / "gap.csv"
    path.write_text("# sensor\nx,y\n0,1\n\n1.5,nan\n3,4.25\n")
    with pytest.raises(ValueError, match=r"the first is nan at line 5, field 2\. "):
        load_data(path)


def test_transposed_data_are_refused(tmp_path):
    path = tmp_path / "wide.npy"
    np.save(path, np.random.default_rng(0).standard_normal((3, 50)))
    with pytest.raises(ValueError, match=r"shape \(3, 50\): .*looks transposed; save x.T"):
        load_data(path)
    with pytest.raises(ValueError, match=r"f: x has 1 time step; at least 2 are needed here\.$"):
        check_trajectory(np.zeros((1, 1)), "f")
    with pytest.raises(ValueError, match=r"Shape \(2, 5\) looks transposed: pass y.T"):
        check_trajectory(np.zeros((2, 5)), "f", name="y", min_steps=3)
    # one time step: said first; transposing is a possibility, not a diagnosis
    with pytest.raises(ValueError, match=r"y has 1 time step; .* If its 5 values are one series"):
        check_trajectory(np.arange(5.0)[None], "f", name="y")
    (tmp_path / "row.csv").write_text("1.5,2.5\n")
    with pytest.raises(ValueError, match=r"row.csv have 1 time step \(one row of 2 values\);"):
        load_data(tmp_path / "row.csv")


def test_a_trajectory_the_model_does_not_observe_is_refused_with_the_likely_fix():
    x = np.random.default_rng(0).standard_normal((50, 3))
    assert check_trajectory(x, "f", n_obs=3) is not None
    with pytest.raises(ValueError) as err:
        check_trajectory(x.T, "f", name="y", n_obs=3)
    assert str(err.value) == (
        "f: y has 50 columns but the model observes N = 3. Shape (3, 50) looks transposed: "
        "pass y.T (one row per time step)."
    )
    # transposed or not, the rows must match n_obs for the hint: otherwise both fixes
    for y, n_obs in ((x.T, 4), (x[:, :2], 3)):
        with pytest.raises(ValueError, match=rf"Pass a \(T, {n_obs}\) trajectory or use a model "):
            check_trajectory(y, "f", name="y", n_obs=n_obs)
    with pytest.raises(ValueError, match=r"looks transposed: transpose it \(one row per time"):
        check_trajectory(x.T, "f", name="the data in x.npy", n_obs=3)


def test_hints_are_code_only_where_the_code_is_valid(tmp_path):
    with pytest.raises(ValueError, match=r"Use y\[:, None\] for a single series"):
        check_trajectory(np.arange(3.0), "f", name="y")
    with pytest.raises(TypeError, match=r"e.g. with y.astype\(np.float64\)"):
        check_trajectory(X > 0, "f", name="y")
    np.save(tmp_path / "cube.npy", np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match=r"got shape \(4, 3, 2\)\. Pass one trajectory") as info:
        load_data(tmp_path / "cube.npy")
    assert "[:, None]" not in str(info.value)
    np.save(tmp_path / "st.npy", np.zeros(5, dtype=[("a", "f8"), ("b", "f8")]))
    with pytest.raises(TypeError, match=r"st.npy must be a real numeric .* Convert it to real"):
        load_data(tmp_path / "st.npy")


def test_nearly_constant_column_is_constant():
    y = np.column_stack([X[:, 0], np.full(4, 0.3)])
    y[1, 1] = 0.1 + 0.2  # one ulp away: rounding noise, not a signal
    with pytest.raises(
        ValueError,
        match=r"x is constant in column\(s\) \[1\] \(sd / max\|x\| = 1\.6e-16, at most 1e-12\)",
    ):
        standardize(y)
    z, _, sd = standardize(X * 1e200)  # huge values: moments without overflow
    np.testing.assert_allclose(z, standardize(X)[0], rtol=1e-12)
    np.testing.assert_allclose(sd, X.std(axis=0) * 1e200, rtol=1e-12)


def test_moments_of_deviations_whose_squares_underflow():
    """2e-150 + 1e-161 z: the values are normal but the squared deviations are subnormal."""
    z = np.random.default_rng(5).standard_normal((1000, 2))
    for base, spread in ((2e-150, 1e-161), (1e-140, 1e-151), (1e-149, 1e-160)):
        x = base + spread * z
        mean, sd = column_mean_sd(x)
        exact = ((x - base) / spread).std(axis=0) * spread  # x - base: exact (Sterbenz)
        np.testing.assert_allclose(sd, exact, rtol=1e-7)  # was 8e-3 off: squares underflowed
        np.testing.assert_allclose(mean, base, rtol=1e-12)
    np.testing.assert_array_equal(column_mean_sd(X)[1], X.std(axis=0))  # ordinary: numpy's bits


def test_far_dimensions_bounds_the_shift_and_the_sd_ratio():
    base = np.array([[-1.0], [1.0]])  # mean 0, sd 1
    columns = [
        base + 3.0,  # the mean 3 sds away: near
        base + 3.0000001,  # farther: far
        5.0 * base,  # sd ratio 5: near
        5.0000001 * base,  # beyond: far
        0.2 * base,  # sd ratio 1/5: near
        0.19999999 * base,  # below: far
        np.array([[-1e308], [1e308]]),  # sd 1e308 (no overflow of the moments): far
    ]
    x = np.hstack(columns)
    mean, sd = np.zeros(x.shape[1]), np.ones(x.shape[1])
    far, x_mean, x_sd = far_dimensions(x, mean, sd)
    np.testing.assert_array_equal(far, [1, 3, 5, 6])
    np.testing.assert_array_equal(x_sd, column_mean_sd(x)[1])
    assert x_mean[0] == 3.0 and x_sd[6] == 1e308
    assert far_dimensions(x[:1], mean, sd)[0].tolist() == list(range(7))  # one row: sd 0


@pytest.mark.skipif(
    np.finfo(np.longdouble).max <= np.finfo(np.float64).max, reason="long double is float64 here"
)
def test_long_double_beyond_float64_is_refused(tmp_path):
    big = X.astype(np.longdouble)
    big[2, 1] = np.longdouble("1e400")
    np.save(tmp_path / "ld.npy", big)
    with pytest.raises(ValueError, match=r"the first is inf at row 2, column 1"):
        load_data(tmp_path / "ld.npy")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_special_file_is_named(tmp_path):
    os.mkfifo(tmp_path / "pipe.npy")
    with pytest.raises(ValueError, match=r"pipe.npy is a named pipe \(FIFO\), not a regular file"):
        load_data(tmp_path / "pipe.npy")


def test_column_names_are_those_of_the_header_load_data_reads(tmp_path):
    rows = "0.5,1,2\n1.25,2,3\n2.5,3,5\n"
    cases = {
        "named.csv": ('# sensor\n"v", w ,mix\n' + rows, ["v", "w", "mix"]),
        "spaced.txt": ("v w mix\n" + rows.replace(",", " "), ["v", "w", "mix"]),
        "names_spaced.csv": ("v w mix\n" + rows, ["v", "w", "mix"]),
        "bare.csv": (rows, None),
    }
    for name, (text, names) in cases.items():
        (tmp_path / name).write_text(text)
        assert load_data(tmp_path / name).shape == (3, 3)  # the header is not data
        assert column_names(tmp_path / name) == names, name
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    assert column_names(tmp_path / "x.npy") is None
