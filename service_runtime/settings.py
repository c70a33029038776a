"""Settings from flags over environment variables, for every service.

Each field of a pydantic-settings class becomes a flag `--field-name`; a flag beats the
environment, which beats the default; pydantic validates the result at start-up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from service_runtime.logs import configure_logging

S = TypeVar("S", bound=BaseSettings)


def settings_from_args(cls: type[S], argv: Sequence[str] | None, prog: str) -> S:
    """Builds settings from flags (one `--field-name` per field) over environment variables."""
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
    for name, field in cls.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{field.description or ''} (env {_env_name(cls, name)}; default {field.default})",
        )
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return cls(**given)


def _env_name(cls: type[BaseSettings], name: str) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{name}".upper()


def describe_errors(error: ValidationError) -> str:
    """One line per invalid setting, without the values given: pydantic's own text quotes
    them, secrets (passwords, API keys) included."""
    lines = []
    for e in error.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in e["loc"]) or "settings"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def start_service(cls: type[S], argv: Sequence[str] | None, service: str) -> S | None:
    """Settings of `service` from flags and environment, with logging configured (lines tagged
    with the service's name); None, after saying why on stderr, when the settings are invalid."""
    try:
        settings = settings_from_args(cls, argv, prog=f"python -m {service}")
    except ValidationError as exc:
        print(f"{service}: invalid settings:\n{describe_errors(exc)}", file=sys.stderr)
        return None
    configure_logging(
        service,
        str(getattr(settings, "log_level", "INFO")),
        str(getattr(settings, "log_format", "text")),
    )
    return settings
