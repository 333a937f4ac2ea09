"""Print the settings tables of docs/configuration.md from the settings models (run after changing a setting)."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from trading_shared.settings import BreakerSettings, PostgresSettings, RedisSettings, RetrySettings


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "`[]`"
    value = field.default
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return f"`{value}`"


def rows(model: type[BaseModel], prefix: str, nested: str = "") -> list[str]:
    """One Markdown row per field: name, environment variable, default, description."""
    out = []
    for name, field in model.model_fields.items():
        if name in ("retry", "breaker"):
            continue
        env = f"{prefix}{nested.upper().replace('.', '__')}{name.upper()}"
        out.append(f"| `{nested}{name}` | `{env}` | {_default(field)} | {field.description or ''} |")
    return out


def main() -> None:
    """Print both tables (paste them over the tables in docs/configuration.md)."""
    for model, prefix in ((PostgresSettings, "POSTGRES_"), (RedisSettings, "REDIS_")):
        print(f"**{model.__name__}** (`{prefix}*`)\n")
        print("| Setting | Environment variable | Default | Meaning |\n| --- | --- | --- | --- |")
        print("\n".join(rows(model, prefix)))
        for nested, sub in (("retry.", RetrySettings), ("breaker.", BreakerSettings)):
            print("\n".join(rows(sub, prefix, nested)))
        print()


if __name__ == "__main__":
    main()
