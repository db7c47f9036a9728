"""What a model name may be: one rule for the catalog that gives names and the routers that
look them up, so a name that could never be in the catalog is refused before any lookup.

Names appear in URLs, metrics labels and folder paths, so they are plain ASCII (no control
characters, no look-alike letters from other scripts), bounded in length, and have no empty,
``.`` or ``..`` parts. A name is only ever a key into the catalog, never a path to open.
"""

from __future__ import annotations

import re

MAX_NAME_CHARS = 256
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


def valid_name(name: str) -> bool:
    """True for a name the catalog could hold; False for path tricks, control or non-ASCII characters."""
    return (
        len(name) <= MAX_NAME_CHARS
        and bool(NAME_RE.fullmatch(name))
        and all(part not in {"", ".", ".."} for part in name.split("/"))
    )
