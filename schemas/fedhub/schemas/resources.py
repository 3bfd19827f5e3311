"""Resource options a site offers (partitions, cores, memory, walltime, images...) and the
one validator that both the coordinator (clear errors at spawn time) and the site agent
(never trusting what arrives) apply. Only validated, normalized values ever reach a
command line, a batch script or a container spec.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SAFE_CHOICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_MEMORY = re.compile(r"(\d+)\s*([kmgt]?)i?b?", re.IGNORECASE)
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?")
_SPAN = re.compile(r"(\d+)\s*([mhd])", re.IGNORECASE)
_MIB = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


class OptionKind(StrEnum):
    """How a value is entered and normalized."""

    CHOICE = "choice"  # one of ``choices`` (partition, image, environment)
    INTEGER = "integer"  # a count (cores, GPUs)
    MEMORY = "memory"  # "4G", "512M" or MiB; normalized to MiB
    DURATION = "duration"  # "2:00:00", "90m", "1-00:00", "4h" or minutes; normalized to minutes


class InvalidOptions(ValueError):
    """User options that do not fit the site's declarations; the message lists each problem."""


class OptionSpec(BaseModel):
    """One option a site offers, shown in the spawn form and enforced on the server side."""

    model_config = ConfigDict(frozen=True)

    name: str
    label: str = ""
    kind: OptionKind
    choices: tuple[str, ...] = ()
    minimum: int | None = Field(default=None, ge=0)
    maximum: int | None = Field(default=None, ge=0)
    default: str | int | None = None
    help: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("option names are 1-32 of a-z, 0-9, '_', starting with a letter")
        return value

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for choice in value:
            if not _SAFE_CHOICE.fullmatch(choice):
                raise ValueError(f"choice {choice!r} has characters that are not allowed")
        return value

    def parse(self, raw: Any) -> str | int:
        """The normalized value of ``raw``; raises ValueError with a readable reason."""
        if self.kind is OptionKind.CHOICE:
            if not isinstance(raw, str) or raw not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}")
            return raw
        if self.kind is OptionKind.INTEGER:
            value = _integer(raw)
        elif self.kind is OptionKind.MEMORY:
            value = parse_memory(raw)
        else:
            value = parse_duration(raw)
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self._show(self.minimum)}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self._show(self.maximum)}")
        return value

    def _show(self, value: int) -> str:
        unit = {OptionKind.MEMORY: " MiB", OptionKind.DURATION: " minutes"}.get(self.kind, "")
        return f"{value}{unit}"


def _integer(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("must be a whole number")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit() and len(raw.strip()) <= 9:
        return int(raw.strip())
    raise ValueError("must be a whole number")


def parse_memory(raw: Any) -> int:
    """MiB from ``4096``, ``"4G"``, ``"512M"``, ``"2GiB"``; raises ValueError."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and (m := _MEMORY.fullmatch(raw.strip())) and len(raw) <= 16:
        mib = int(m.group(1)) * _MIB[m.group(2).lower()]
        if mib >= 1:
            return int(mib)
    raise ValueError("must be a memory size such as 4G, 512M or a number of MiB")


def parse_duration(raw: Any) -> int:
    """Minutes from ``90``, ``"90m"``, ``"4h"``, ``"2d"``, ``"2:00:00"``, ``"1-12:00"``."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and len(raw) <= 16:
        text = raw.strip()
        if text.isdigit():
            return int(text)
        if m := _SPAN.fullmatch(text):
            return int(m.group(1)) * {"m": 1, "h": 60, "d": 1440}[m.group(2).lower()]
        if m := _CLOCK.fullmatch(text):
            days, hours, minutes = int(m.group(1) or 0), int(m.group(2)), int(m.group(3))
            if minutes < 60 and int(m.group(4) or 0) < 60:
                return days * 1440 + hours * 60 + minutes
    raise ValueError("must be a duration such as 2:00:00, 90m, 4h or a number of minutes")


# Config fields that take the same spellings users may type ("4G", "2:00:00").
MemoryMiB = Annotated[int, BeforeValidator(lambda v: parse_memory(v))]
Minutes = Annotated[int, BeforeValidator(lambda v: parse_duration(v))]


def unknown_option(name: str, known: Sequence[str], also: Sequence[str] = ("site",)) -> str:
    """Why ``name`` is refused, with the likeliest meant name (among the options and the
    spawn body's own keys, ``also``) and what is offered."""
    shown = repr(name[:40])
    guess = difflib.get_close_matches(name, [*known, *also], n=1, cutoff=0.6)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    offered = f"options here: {', '.join(known)}" if known else "this site takes no options"
    return f"unknown option {shown} ({offered}{hint})"


def validate_options(specs: Sequence[OptionSpec], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Normalized options: defaults filled in, every value checked, unknown keys refused.

    Raises InvalidOptions naming every problem at once.
    """
    known = {s.name: s for s in specs}
    problems = [unknown_option(k, list(known)) for k in raw if k not in known]
    out: dict[str, Any] = {}
    for spec in specs:
        value = raw.get(spec.name, spec.default)
        if value is None or value == "":
            continue
        try:
            out[spec.name] = spec.parse(value)
        except ValueError as exc:
            problems.append(f"{spec.label or spec.name}: {exc}")
    if problems:
        raise InvalidOptions("; ".join(problems))
    return out


def specs_from_json(data: Any) -> list[OptionSpec]:
    """Option declarations from their JSON form (as published by an agent); raises
    InvalidOptions if they do not parse."""
    if not isinstance(data, list):
        return []
    try:
        return [OptionSpec.model_validate(item) for item in data]
    except ValueError as exc:
        raise InvalidOptions(f"malformed option declarations: {exc}") from exc
