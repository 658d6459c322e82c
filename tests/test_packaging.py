"""The dependency floors of ``pyproject.toml`` and the pins ``.ci/floors`` tests them with."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _version(text: str) -> tuple[int, ...]:
    """``"0.30"`` -> ``(0, 30, 0)``: release numbers padded to three, so 0.30 == 0.30.0."""
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (3 - len(parts))


def _floors() -> dict[str, tuple[int, ...]]:
    """``name -> floor`` of every requirement in pyproject.toml (extras of a name dropped)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    floors = {}
    for requirement in requirements:
        match = re.fullmatch(r"([\w-]+)(?:\[[\w,-]+\])?>=([\d.]+)(?:,<[\d.]+)?", requirement)
        assert match, f"pyproject.toml: {requirement!r} is not of the form name>=floor[,<cap]"
        name, floor = match[1].lower(), _version(match[2])
        assert floors.setdefault(name, floor) == floor, f"two floors for {name}"
    return floors


def _pins() -> dict[str, tuple[int, ...]]:
    text = (ROOT / ".ci" / "floors.txt").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    pins = {}
    for line in lines:
        match = re.fullmatch(r"([\w-]+)==([\d.]+)", line)
        assert match, f".ci/floors.txt: {line!r} is not of the form name==version"
        pins[match[1].lower()] = _version(match[2])
    return pins


def test_ci_floors_pin_exactly_the_floors_of_pyproject():
    assert _pins() == _floors()
