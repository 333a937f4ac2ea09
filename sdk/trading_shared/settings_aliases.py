"""The replaced clients' settings names, accepted as deprecated aliases of the SDK's (see docs/migration.md).

Each old name, given as a keyword or as an environment variable (``POSTGRES_POOL_MIN_SIZE``, ``REDIS_MAX_RETRIES``:
the settings' prefix and the old field name; the replaced models read no environment themselves), is moved to
its new place and warns with a ``DeprecationWarning`` naming the new spelling. Given together with its new
spelling with a different value, from any source, construction fails with
:class:`~trading_shared.errors.ConfigurationError` naming both. The values then pass the new field's validation.

``max_retries`` counted attempts: the replaced clients ran ``for attempt in range(max_retries)``, so
``max_retries=3`` meant three attempts, the first included. It maps to ``retry.max_attempts`` unchanged.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .settings import RetrySettings

#: The pydantic error type of an old name given with a different value than its new spelling.
CONFLICT = "deprecated_alias_conflict"
_INT: TypeAdapter[int] = TypeAdapter(int)
_FLOAT: TypeAdapter[float] = TypeAdapter(float)


@dataclass(frozen=True)
class Alias:
    """One old settings name: where its value goes now (``()``: accepted and ignored) and its type."""

    old: str
    path: tuple[str, ...]
    number: type[int] | type[float]

    @property
    def new(self) -> str:
        """The new spelling, dotted (``retry.max_attempts``), or ``""`` for an ignored name."""
        return ".".join(self.path)


_RETRY = (
    Alias("max_retries", ("retry", "max_attempts"), int),
    Alias("initial_retry_delay_s", ("retry", "initial_backoff"), float),
)
#: Old PostgresSettings names.
POSTGRES_ALIASES = (Alias("pool_min_size", ("min_size",), int), Alias("pool_max_size", ("max_size",), int), *_RETRY)
#: Old RedisSettings names. ``pubsub_max_connections`` sized the replaced client's separate pub/sub pool; the SDK
#: takes pub/sub connections from the one pool (``max_connections``), so it is checked and ignored.
REDIS_ALIASES = (*_RETRY, Alias("pubsub_max_connections", (), int))


def _number(alias: Alias, value: Any) -> int | float:
    adapter = _INT if alias.number is int else _FLOAT
    try:
        return adapter.validate_python(value)
    except ValidationError:
        kind = "an integer" if alias.number is int else "a number"
        raise ValueError(f"{alias.old}: must be {kind} (deprecated alias of {alias.new or 'nothing'})") from None


def _stacklevel() -> int:
    """The stack level of the first frame outside pydantic and this package: the code that built the settings."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(("pydantic", "trading_shared.settings")):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def apply(data: Any, aliases: tuple[Alias, ...], model: str) -> Any:
    """Move old names in ``data`` (the settings' merged input) to their new places; see the module docstring."""
    if not isinstance(data, Mapping) or not any(a.old in data for a in aliases):
        return data
    data = dict(data)
    for alias in aliases:
        if alias.old not in data:
            continue
        value = _number(alias, data.pop(alias.old))
        if not alias.path:
            warnings.warn(
                f"{model}.{alias.old} is deprecated and ignored: pub/sub connections come from the one pool, "
                "sized by max_connections",
                DeprecationWarning,
                stacklevel=_stacklevel(),
            )
            continue
        warnings.warn(
            f"{model}.{alias.old} is deprecated; use {alias.new}", DeprecationWarning, stacklevel=_stacklevel()
        )
        container = data
        for part in alias.path[:-1]:
            nested = container.get(part)
            if isinstance(nested, BaseModel):
                nested = nested.model_dump(exclude_unset=True)
            container[part] = dict(nested) if isinstance(nested, Mapping) else {} if nested is None else nested
            container = container[part]
            if not isinstance(container, dict):
                raise ValueError(f"{alias.old}: cannot be combined with {part} given as {type(container).__name__}")
        key = alias.path[-1]
        if key in container and _number(alias, container[key]) != value:
            raise PydanticCustomError(
                CONFLICT,
                "{old} and {new} are both given, with different values: {old} is the deprecated spelling of "
                "{new}; keep only {new}",
                {"old": f"{model}.{alias.old}", "new": f"{model}.{alias.new}"},
            )
        container[key] = value
    return data


def raise_conflict(exc: ValidationError) -> None:
    """Raise :class:`ConfigurationError` if ``exc`` reports an old name given with a different new value."""
    for error in exc.errors(include_input=False):
        if error["type"] == CONFLICT:
            raise ConfigurationError(error["msg"]) from None


class OldEnvNames(PydanticBaseSettingsSource):
    """Settings source: the old names as environment variables (prefix + old name, case-insensitive)."""

    def __init__(self, settings_cls: type[BaseSettings], aliases: tuple[Alias, ...]) -> None:
        super().__init__(settings_cls)
        prefix = str(settings_cls.model_config.get("env_prefix", "")).lower()
        self._names = {prefix + a.old: a.old for a in aliases}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Not used: the old names are not fields (:meth:`__call__` reads them)."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, value in os.environ.items():
            old = self._names.get(name.lower())
            if old is not None:
                found[old] = value
        return found


class _OldNames:
    """``__init__`` that turns an alias conflict into ConfigurationError, and the old-names environment source."""

    ALIASES: ClassVar[tuple[Alias, ...]] = ()

    def __init__(self, *args: Any, **values: Any) -> None:
        try:
            super().__init__(*args, **values)
        except ValidationError as exc:
            raise_conflict(exc)
            raise

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The default sources, plus the old names read from the environment."""
        old_env = OldEnvNames(settings_cls, cls.ALIASES)
        return init_settings, env_settings, old_env, dotenv_settings, file_secret_settings

    def _old(self, old: str, new: str) -> None:
        warnings.warn(f"{type(self).__name__}.{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


class _RetryOldNames(_OldNames):
    """The old retry names both settings classes had."""

    if TYPE_CHECKING:
        retry: RetrySettings

    @property
    def max_retries(self) -> int:
        """Deprecated: ``retry.max_attempts`` (the old name counted attempts, the first included)."""
        self._old("max_retries", "retry.max_attempts")
        return self.retry.max_attempts

    @property
    def initial_retry_delay_s(self) -> float:
        """Deprecated: ``retry.initial_backoff``."""
        self._old("initial_retry_delay_s", "retry.initial_backoff")
        return self.retry.initial_backoff


class PostgresOldNames(_RetryOldNames):
    """Old PostgresSettings names, readable as deprecated properties."""

    ALIASES = POSTGRES_ALIASES
    if TYPE_CHECKING:
        min_size: int
        max_size: int

    @property
    def pool_min_size(self) -> int:
        """Deprecated: ``min_size``."""
        self._old("pool_min_size", "min_size")
        return self.min_size

    @property
    def pool_max_size(self) -> int:
        """Deprecated: ``max_size``."""
        self._old("pool_max_size", "max_size")
        return self.max_size


class RedisOldNames(_RetryOldNames):
    """Old RedisSettings names, readable as deprecated properties (``pubsub_max_connections`` is not kept)."""

    ALIASES = REDIS_ALIASES


__all__ = ["CONFLICT", "POSTGRES_ALIASES", "REDIS_ALIASES", "Alias", "PostgresOldNames", "RedisOldNames", "apply"]
