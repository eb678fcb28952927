"""StrEnum: Python 3.11's enum.StrEnum for 3.10 (the Jetson's Python), the base of every enum whose
values travel as text (JSON, metrics labels, proto string fields)."""

from __future__ import annotations

import enum

__all__ = ["StrEnum"]


class StrEnum(str, enum.Enum):
    """Members are str and equal their values; str(), f-strings and %-formatting give the value
    (a plain `(str, Enum)` gives "Class.MEMBER" there on 3.11, which would change a metrics label
    or a log line), and json.dumps writes the value."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)
