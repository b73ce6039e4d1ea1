"""Rotations learned at paper scale and shipped inside the package, loadable by a short name.

Each `learned/<name>.safetensors` is a rotation file written by `spinquant optimize`: its metadata holds the
model it was learned for (any other model is refused on load), the recipe, the budget and how it was made
(command, commit, date, train and held-out losses). `--rotation <name>` accepts these names wherever it accepts a
file; a file of that name in the working directory wins.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).parent / "learned"


def shipped_names() -> list[str]:
    """Short names of the shipped rotation files, sorted."""
    return sorted(p.name.removesuffix(".safetensors") for p in SHIPPED_DIR.glob("*.safetensors"))


def shipped_path(name: str) -> Path | None:
    """The shipped file called `name`, or None."""
    path = SHIPPED_DIR / f"{name}.safetensors"
    return path if Path(name).name == name and path.is_file() else None


def rotation_source(text: str) -> Path:
    """`--rotation`'s argument as a path: an existing file, else a shipped rotation of that name, else as given
    (the caller's existence check then names the choices)."""
    path = Path(text)
    if path.is_file():
        return path
    return shipped_path(text) or path


def find_shipped(fingerprint: str | None, recipe: str, had: bool) -> str | None:
    """The name of the shipped rotation learned for the model with `fingerprint` by `recipe` (had or no_had)."""
    import json

    from ..checkpoint import read_metadata

    for name in shipped_names():
        meta = read_metadata(shipped_path(name))
        info, model = json.loads(meta.get("info", "{}")), json.loads(meta.get("model", "{}"))
        if (info.get("recipe"), info.get("had"), model.get("fingerprint")) == (recipe, had, fingerprint):
            return name
    return None
