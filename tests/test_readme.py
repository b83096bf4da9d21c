"""README's Python blocks run as written, in order, in one namespace (so the README cannot drift from the API); the
example of "Property-test your own model" as a user copies it: alone, in a namespace of its own."""

import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _blocks(text: str | None = None) -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text() if text is None else text, flags=re.S)


def _standalone() -> str:
    """The python block of the section "Property-test your own model"."""
    readme = README.read_text()
    return _blocks(readme[readme.index("## Property-test your own model"):])[0]


def test_readme_python_blocks_run(capsys):
    blocks, standalone = _blocks(), _standalone()
    assert len(blocks) >= 5 and standalone in blocks
    torch.manual_seed(0)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        alone = block == standalone
        if alone:  # self-contained, from a fresh seed; its names stay available to the blocks after it
            torch.manual_seed(0)
        ns = {"__name__": "readme"} if alone else namespace
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
        except Exception as e:  # name the block, so a failure points at the README
            raise AssertionError(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{block}") from e
        if alone:
            namespace.update((k, v) for k, v in ns.items() if not k.startswith("__"))
    out = capsys.readouterr().out  # what the blocks print: the property-test example's check_learned report
    assert "check_learned" in out and "FAIL" not in out, out


def test_readme_names_no_file_outside_the_repository():
    assert "../shared" not in README.read_text()
