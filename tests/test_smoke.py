from __future__ import annotations

from pathlib import Path

from conftest import Built, cli, copy_env


def test_built_env_verifies_full_after_move(built: Built, tmp_path: Path) -> None:
    moved = copy_env(built.env, tmp_path / "moved")
    res = cli("verify", moved, "--level", "full", "--expect", built.digest)
    assert res.exit_code == 0, res.stdout
