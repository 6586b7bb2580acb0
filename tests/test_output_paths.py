"""`check_output_path`: outputs that cannot be written are refused before any work, in one line."""

import os

import pytest

from hemgs.errors import InputError
from hemgs.io.atomic import check_output_path


def test_a_writable_path_passes_and_leaves_nothing_behind(tmp_path):
    assert check_output_path(tmp_path / "a.hgs") == tmp_path / "a.hgs"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "missing" / "a.hgs", "does not exist"),
    (lambda d: d, "it is a folder"),
    (lambda d: (d / "f").write_text("x") and d / "f" / "a.hgs", "is not a folder"),
])
def test_unwritable_paths_are_refused_naming_the_users_path(tmp_path, make, says):
    path = make(tmp_path)
    with pytest.raises(InputError, match=says) as err:
        check_output_path(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not any(n.endswith(".probe") for n in os.listdir(tmp_path))
