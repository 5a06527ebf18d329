"""The git revision a run records: the package's own checkout, ``-dirty`` only for the package's files."""
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "channelnorm"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def _revision_of_copy(package_dir, load_script):
    """``git_revision`` as the copy of environment.py in ``package_dir`` computes it (it reads its own path)."""
    return load_script(package_dir / "experiments" / "environment.py").git_revision()


def _repo_with_package(tmp_path, package_at):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".venv/\n__pycache__/\n")
    (repo / "README.md").write_text("readme\n")
    copy = repo / package_at / "channelnorm"
    shutil.copytree(PACKAGE / "experiments", copy / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "__init__.py").write_text("")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    return repo, copy


def test_the_revision_is_dirty_only_for_changes_to_the_package(tmp_path, load_script):
    repo, copy = _repo_with_package(tmp_path, "src")
    head = _git(repo, "rev-parse", "HEAD")
    assert _revision_of_copy(copy, load_script) == head
    (repo / "README.md").write_text("changed\n")
    assert _revision_of_copy(copy, load_script) == head
    (repo / "results.json").write_text("{}\n")   # an untracked file outside the package
    assert _revision_of_copy(copy, load_script) == head
    (copy / "experiments" / "tune.py").write_text("# changed\n")
    assert _revision_of_copy(copy, load_script) == head + "-dirty"


def test_a_new_file_in_the_package_not_yet_added_makes_the_revision_dirty(tmp_path, load_script):
    repo, copy = _repo_with_package(tmp_path, "src")
    head = _git(repo, "rev-parse", "HEAD")
    (copy / "experiments" / "new_schedule.py").write_text("LR = 0.1\n")
    assert _revision_of_copy(copy, load_script) == head + "-dirty"


def test_a_copy_installed_inside_another_checkout_claims_no_revision(tmp_path, load_script):
    # a project's ignored .venv holds an installed copy: that project's commit is not this package's
    repo, _ = _repo_with_package(tmp_path, "src")
    installed = repo / ".venv" / "site-packages" / "channelnorm"
    shutil.copytree(PACKAGE / "experiments", installed / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    (installed / "__init__.py").write_text("")
    assert _revision_of_copy(installed, load_script) is None
