"""README's Python blocks run as written, in order, in one namespace (so the README cannot drift from the API)."""

import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run():
    blocks = _blocks()
    assert len(blocks) >= 5
    torch.manual_seed(0)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block, so a failure points at the README
            raise AssertionError(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{block}") from e


def test_readme_names_no_file_outside_the_repository():
    assert "../shared" not in README.read_text()
