"""The README's "Use it on your model" example runs as written: what a new user copies first must work."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(title: str) -> str:
    """The first ```python block under the README heading ``## title``."""
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    block = re.search(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)
    assert block, f"README section {title!r} has no python block"
    return block.group(1)


def test_the_library_example_runs(capsys):
    namespace = {}
    exec(compile(section_code("Use it on your model"), "README.md", "exec"), namespace)
    from torch import nn

    from sparsebench.representations import SparseLinear

    plain = namespace["plain"]
    assert not any(isinstance(m, SparseLinear) for m in plain.modules())
    assert isinstance(plain[2], nn.Linear)
    printed = capsys.readouterr().out
    assert "csr" in printed and "left dense" in printed  # the summary, as the comment says
    assert float((plain[2].weight == 0).float().mean()) >= 0.9 - 1e-3  # the pruned weights are zero
