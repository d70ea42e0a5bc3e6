"""The generated references (API, settings) match the code, and the README's commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hubbub.config import TABLE_SETTINGS, Config, check_file, env_settings

from .conftest import ROOT

SETTINGS_DOC = ROOT / "docs" / "configuration.md"


def test_api_reference_is_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_api_docs.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_settings_reference_is_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_config_docs.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_settings_reference_names_every_setting_with_a_variable_hubbub_reads() -> None:
    text = SETTINGS_DOC.read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \|.*?\| `(HUBBUB_\w+)` \|", text, re.M))
    settings = {name for name in Config.__dataclass_fields__ if name not in TABLE_SETTINGS}
    assert set(rows) == settings
    defaults = Config()
    for name, variable in rows.items():
        value = getattr(defaults, name)
        sample = ",".join(value) if isinstance(value, list) else "true" if value is None else str(value)
        assert env_settings({variable: sample}) == {name: value if value is not None else True}, variable


def test_settings_reference_example_is_a_valid_file(tmp_path: Path) -> None:
    example = SETTINGS_DOC.read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "hub.toml"
    path.write_text(example)
    assert check_file(path) == []
    config = Config.load(path, env={})
    assert config.channels.history and config.namespace("chat:x") is not None


def test_readme_starts_with_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["python3 dev.py serve", "python3 dev.py test"]
    assert "python3 dev.py test" in (ROOT / ".ci" / "run").read_text()
