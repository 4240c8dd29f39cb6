"""The wheel installs only our own top-level names, and lists every package folder on disk."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"dreamzero_policy", "lerobot_policy_dreamzero", "dreamzero_envs", "dreamzero_configs"}


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_no_generic_top_level_names():
    tops = {p.split(".")[0] for p in _setuptools()["packages"]}
    assert tops == OURS, tops  # in particular no bare `envs` or `configs`


def test_every_package_folder_is_listed():
    st = _setuptools()
    src = {name: ROOT / path for name, path in st["package-dir"].items()}
    on_disk = set()
    for top in OURS:
        base = src.get(top, ROOT / top)
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            on_disk.add(".".join([top, *rel.parts]))
    assert on_disk == set(st["packages"]), on_disk ^ set(st["packages"])


def test_installed_names_import_from_the_layout_folders():
    import dreamzero_configs
    import dreamzero_envs

    assert Path(dreamzero_envs.__file__).parent == ROOT / "envs"
    assert Path(dreamzero_configs.__file__).parent == ROOT / "configs"
