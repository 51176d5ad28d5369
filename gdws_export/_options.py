"""`Options`: the base of the small, frozen, validated option dataclasses that a function takes
as `options=` (torchao's config objects), besides the keywords it took before they existed."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from gdws_export.errors import InvalidInputError

_Options = TypeVar("_Options", bound="Options")


class Options:
    """Mixin for a frozen dataclass of options; subclasses validate in `__post_init__`."""

    @classmethod
    def resolve(cls: type[_Options], options: _Options | None = None, **overrides: Any) -> _Options:
        """`options` (the defaults when None) with `overrides`, field by field, applied.

        An unknown name is a TypeError, as for any keyword.

        Example:
            >>> from gdws_export.runtimes.build import OrtBuildOptions
            >>> OrtBuildOptions.resolve(None, threads=2).threads
            2
        """
        if options is None:
            return cls(**overrides)
        if not isinstance(options, cls):
            raise InvalidInputError(
                f"options must be a {cls.__name__}, got {type(options).__name__}"
            )
        return dataclasses.replace(options, **overrides)  # type: ignore[type-var]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the options, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
