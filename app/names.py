"""Model version names: the store's directory names, also taken from admin requests, so never a path that
escapes the store (`..`, `/`) or hides in it (`.tmp-*`)."""

from __future__ import annotations

import re

from app.errors import CheckpointError

_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_version_name(version: str) -> str:
    """Refuse names that could escape the store (`..`, `/`) or hide (`.tmp-*`)."""
    if not isinstance(version, str) or not _VERSION_NAME.match(version) or ".." in version:
        raise CheckpointError(
            f"invalid version name {version!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return version
