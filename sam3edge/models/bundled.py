"""Teachers shipped inside the package, by name: the only models that load with no path and no hub."""

from __future__ import annotations

from pathlib import Path

BUNDLED_TEACHERS = {"orchard-toy": "teachers/orchard-toy"}


def resolve_model(spec: str) -> str:
    """A bundled teacher name (``orchard-toy``) -> its directory; a directory or hub id is returned as given."""
    if spec in BUNDLED_TEACHERS:
        from importlib.resources import files

        path = Path(str(files("sam3edge"))) / BUNDLED_TEACHERS[spec]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"the bundled teacher {spec!r} is missing from {path}; reinstall sam3edge "
                                    "or reproduce it with benchmarks/train_toy_teacher.py")
        return str(path)
    return spec
