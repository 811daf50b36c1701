"""The README's quickstart (the notebook with crowdphot imports) runs and does what it says."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_setup_commands():
    lines = [ln for ln in README.read_text().splitlines() if ln.strip()]
    assert lines[1:4] == ["```", lines[2], lines[3]]
    assert lines[2].startswith("make demo") and lines[3].startswith("make test")


def test_readme_quickstart_runs(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = code.replace("progress_bar=True", "progress_bar=False")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    phot, matched, resid = namespace["phot"], namespace["matched"], namespace["resid"]
    assert len(phot) == 500 and len(matched) == 500
    assert np.all(np.asarray(phot["flags"]) == 0)
    # the residual is the added noise (sigma 0.5) and nothing else
    assert abs(float(np.std(resid)) - 0.5) < 0.01
