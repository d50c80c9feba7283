"""Recipes shipped inside the package, addressable by name.

Someone who installs the wheel has no repository, so no `recipes/edge.yaml` to pass to
`richkd-deploy train`. The recipes therefore live in `richkd_deploy/recipes/` (package
data; the repository's top-level `recipes` is a symlink to it) and a bare name finds
them, as Ultralytics' `yolov8n.yaml` or timm's model names do. A file that exists
always wins over a name, so a user's own `edge.yaml` in the current folder is never
shadowed by the packaged one.

Relative paths: a user's recipe file resolves them against its own folder. A packaged
recipe's folder is inside site-packages, which is neither the user's nor writable, so
its relative paths resolve against the user data folder (`user_cache.data_dir()`,
`$XDG_CACHE_HOME/richkd-deploy/data`), and relative paths typed in `-o` overrides
resolve against the current folder, where the user typed them.

Convention for a new recipe: `richkd_deploy/recipes/<name>.yaml` whose first line is
`# description: <one line>`; `recipe list` prints it and a test requires it.
"""

from __future__ import annotations

import difflib
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from richkd_deploy import recipe as recipe_mod
from richkd_deploy.errors import RecipeError
from richkd_deploy.runs import atomic_copy
from richkd_deploy.user_cache import data_dir

PACKAGED_DIR = Path(__file__).resolve().parent / "recipes"
_DESCRIPTION = "# description:"
_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class PackagedRecipe:
    name: str
    path: Path
    description: str


def describe(path: Path) -> str:
    """The `# description:` line of a recipe's leading comment block, else its first comment."""
    first_comment = ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.strip()
            if not text.startswith("#"):
                break
            if text.lower().startswith(_DESCRIPTION):
                return text[len(_DESCRIPTION):].strip()
            first_comment = first_comment or text.lstrip("#").strip()
    return first_comment


def packaged() -> list[PackagedRecipe]:
    """The recipes shipped in the package, sorted by name."""
    if not PACKAGED_DIR.is_dir():
        return []
    return [PackagedRecipe(p.stem, p, describe(p)) for p in sorted(PACKAGED_DIR.iterdir())
            if p.suffix in _SUFFIXES and p.is_file()]


def _names() -> str:
    return ", ".join(r.name for r in packaged()) or "none (a broken install?)"


def find_packaged(name: str) -> Path | None:
    """The packaged recipe called `name` (`edge` or `edge.yaml`), or None."""
    if not name or "/" in name or os.sep in name:
        return None
    stem = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)
    return next((r.path for r in packaged() if r.name == stem), None)


def resolve(spec: str | Path) -> Path:
    """A recipe argument as given on the command line: an existing file wins, then a
    packaged recipe's name; anything else is a RecipeError saying what exists."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    shipped = find_packaged(text)
    if shipped is not None:
        return shipped
    if path.is_dir():
        raise RecipeError(f"recipe {text}: is a folder; give a recipe file or a packaged recipe name ({_names()})")
    if "/" in text or os.sep in text or text.endswith(_SUFFIXES):
        raise RecipeError(f"recipe {text}: file not found (packaged recipes, usable by name: {_names()})")
    close = difflib.get_close_matches(text, [r.name for r in packaged()], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise RecipeError(f"recipe {text}: no such file and no packaged recipe of that name; {hint}"
                      f"packaged: {_names()} (richkd-deploy recipe list)")


def is_packaged(path: Path) -> bool:
    """True for a file in the package's recipe folder, however it was named (the repository's
    `recipes/edge.yaml` is the packaged edge recipe through a symlink, and loads the same)."""
    return Path(path).resolve().parent == PACKAGED_DIR.resolve()


def load(spec: str | Path, overrides: typing.Sequence[str] = ()) -> recipe_mod.Recipe:
    """`recipe.load` for a file or a packaged recipe's name (see the module docstring for
    where relative paths resolve)."""
    path = resolve(spec)
    if not is_packaged(path):
        return recipe_mod.load(path, overrides)
    shipped = recipe_mod.load(path, base_dir=data_dir(), check_files=not overrides)
    if not overrides:
        return shipped
    # Its paths are absolute now; only the overrides' relative paths meet the current folder.
    return recipe_mod.from_dict(shipped.to_dict(), base_dir=Path.cwd(), source=shipped.source, overrides=overrides)


def init(name: str, dest: str | Path | None = None, force: bool = False) -> Path:
    """Copy packaged recipe `name` to `dest` (a file, or a folder to put `<name>.yaml` in;
    default `./<name>.yaml`) for the user to edit. Refuses to overwrite unless `force`."""
    src = find_packaged(name)
    if src is None:
        close = difflib.get_close_matches(name, [r.name for r in packaged()], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RecipeError(f"recipe init {name}: no packaged recipe of that name; {hint}packaged: {_names()}")
    target = Path(dest).expanduser() if dest is not None else Path(f"{src.stem}.yaml")
    if target.is_dir() or str(dest).endswith(("/", os.sep)):  # `init edge configs/`: a folder, made if need be
        target = target / src.name
    if target.exists() and not force:
        raise RecipeError(f"{target} exists; pass --force to overwrite it, or give another DEST")
    if target.exists() and target.resolve() == src.resolve():
        raise RecipeError(f"{target} is the packaged recipe itself; give another DEST")
    return atomic_copy(src, target)
