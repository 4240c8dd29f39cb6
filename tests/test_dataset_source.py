"""A dataset root the user names must hold a dataset: no hub lookup, nothing created."""

import pytest

from dreamzero_policy.training.dataset_source import check_local_root, open_dataset


def test_missing_empty_and_file_roots_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset("user/typo", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no LeRobotDataset"):
        open_dataset("user/typo", tmp_path / "empty")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_local_root(tmp_path / "f")
