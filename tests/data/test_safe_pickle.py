"""The restricted unpickler: official-style pickles load; anything that names another global is refused."""

import collections
import os
import pickle
import subprocess

import numpy as np
import pytest

from grove.data.safe_pickle import PickleReadError, UnsafePickleError, safe_load, safe_loads


class _Payload:
    """A pickle whose loading would call `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Custom:
    def __init__(self):
        self.value = 1


def _write(tmp_path, name, obj, protocol=pickle.HIGHEST_PROTOCOL):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_os_system_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = _write(tmp_path, "evil.pkl", {"clip": _Payload(os.system, f"touch {marker}")}, protocol)
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    assert str(path) in str(info.value)
    assert info.value.global_name in ("posix.system", "os.system", "nt.system")
    assert info.value.global_name in str(info.value)
    assert not marker.exists()
    # the same bytes really do run the command under plain pickle: the test payload is live
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "payload, global_name",
    [
        (_Payload(eval, "__import__('os').getcwd()"), "builtins.eval"),
        (_Payload(exec, "x = 1"), "builtins.exec"),
        (_Payload(getattr, "text", "upper"), "builtins.getattr"),
        (_Payload(subprocess.check_output, ["true"]), "subprocess.check_output"),
        (Custom(), f"{__name__}.Custom"),
        (collections.defaultdict(eval), "builtins.eval"),
    ],
)
def test_other_globals_are_refused(tmp_path, payload, global_name):
    path = _write(tmp_path, "bad.pkl", [1, {"x": payload}])
    with pytest.raises(UnsafePickleError, match=f"{path}.*'{global_name}'"):
        safe_load(path)


def test_hand_written_protocol0_global_is_refused(tmp_path):
    path = tmp_path / "old.pkl"
    path.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(UnsafePickleError, match="'os.system'"):
        safe_load(path)


OFFICIAL_LIKE = {
    "vid_1": {
        "fps": 29.97,
        "clip_id": 1,
        "caption": '"a man"',
        "phrases": ["a man"],
        "bboxes": [[[1, 2, 3, 4]], [], [[1.5, 2.5, 3.5, 4.5]]],
        "labels": [["a man"], [], ["a man"]],
        "misc": (1, 2.0, None, True, b"raw", bytearray(b"ba"), 1 + 2j, {3, 4}, frozenset({5}), range(3), slice(1, 2)),
        "ordered": collections.OrderedDict(b=1, a=2),
        "default": collections.defaultdict(list, {"k": [1]}),
    }
}


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_builtin_containers_and_scalars_load(tmp_path, protocol):
    path = _write(tmp_path, "ok.pkl", OFFICIAL_LIKE, protocol)
    assert safe_load(path) == OFFICIAL_LIKE
    assert safe_load(path, allow_numpy=False) == OFFICIAL_LIKE


NUMPY_VALUES = {
    "boxes": np.array([[1.5, 2, 3, 4]], np.float32),
    "empty": np.zeros((0, 4)),
    "labels": np.array(["a man", "it"]),
    "objects": np.array(["a", 1, None], dtype=object),
    "fps": np.float64(29.97),
    "start": np.int64(3),
    "flag": np.bool_(True),
    "word": np.str_("knife"),
    "dtype": np.dtype("<U7"),
}


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_arrays_scalars_and_dtypes_load(tmp_path, protocol):
    path = _write(tmp_path, "np.pkl", NUMPY_VALUES, protocol)
    loaded = safe_load(path)
    assert list(loaded) == list(NUMPY_VALUES)
    for name, value in NUMPY_VALUES.items():
        assert type(loaded[name]) is type(value), name
        if isinstance(value, np.ndarray):
            assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
            assert loaded[name].tolist() == value.tolist()
        else:
            assert loaded[name] == value


def test_numpy_1x_module_names_load():
    # numpy 1.x wrote numpy.core.multiarray; numpy 2 writes numpy._core.multiarray
    data = pickle.dumps(np.arange(3, dtype=np.int16), protocol=2)
    assert b"numpy._core.multiarray" in data
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert safe_loads(old).tolist() == [0, 1, 2]


def test_numpy_is_refused_when_not_allowed(tmp_path):
    path = _write(tmp_path, "np.pkl", {"boxes": np.zeros((1, 4))})
    with pytest.raises(UnsafePickleError, match=r"numpy\..*untrusted pickles may only hold builtin"):
        safe_load(path, allow_numpy=False)


def test_codecs_encode_only_latin1():
    ok = b"c_codecs\nencode\n(Vab\nVlatin1\ntR."
    assert safe_loads(ok) == b"ab"
    evil = b"c_codecs\nencode\n(Vab\nVrot13\ntR."
    with pytest.raises(PickleReadError, match="rot13"):
        safe_loads(evil, source="evil.pkl")


def test_not_a_pickle_truncated_missing_and_persistent_id(tmp_path):
    text = tmp_path / "notes.pkl"
    text.write_text("this is not a pickle\n")
    with pytest.raises(PickleReadError, match=f"{text}: not a readable pickle"):
        safe_load(text)
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pickle.dumps(OFFICIAL_LIKE)[:40])
    with pytest.raises(PickleReadError, match=str(truncated)):
        safe_load(truncated)
    with pytest.raises(FileNotFoundError, match="absent.pkl"):
        safe_load(tmp_path / "absent.pkl")
    with pytest.raises(PickleReadError, match="persistent"):
        safe_loads(b"P0\n.")
