"""Config plumbing shared by every YAML the project reads.

Every model derives from `StrictModel` (unknown keys are errors), files are loaded through
`load_yaml_model`, and `--set a.b.c=value` overrides are applied to the raw mapping before
validation so that they are checked like everything else.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from koemb.errors import UserError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for all config models: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at `loc` (best effort: follows nested models and lists of models)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            # A tagged union member is named by its tag in `loc`; look it up among the union's members.
            return []
        ann = fields[part].annotation
        current = _first_model_in(ann)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _first_model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """Turn pydantic's error list into lines that name the field and what was expected."""
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            known = _known_fields(model, loc)
            hint = difflib.get_close_matches(key, known, n=1)
            msg = f"  {where}: unknown key '{key}'"
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
            elif known:
                msg += f"; valid keys here: {', '.join(known)}"
            lines.append(msg)
        else:
            got = e.get("input")
            got_s = repr(got)
            if len(got_s) > 80:
                got_s = got_s[:77] + "..."
            lines.append(f"  {where}: {e['msg']} (got {got_s})")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value); the value is parsed as a YAML scalar/flow value."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set stages.0.lr=1e-4")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise UserError(f"--set {item!r}: empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides in place; numeric path parts index lists (`stages.0.lr`)."""
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError):
                    raise UserError(f"--set {item!r}: '{part}' is not a valid index into a list of {len(node)}") from None
                continue
            if part not in node or node[part] is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
        last = path[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = value
            except (ValueError, IndexError):
                raise UserError(f"--set {item!r}: '{last}' is not a valid index into a list of {len(node)}") from None
        else:
            node[last] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (never constructs Python objects)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return data


def validate_model(model: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, model, source)) from None


def load_yaml_model(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    data = apply_overrides(read_yaml(path), overrides or [])
    return validate_model(model, data, str(path))


def dump_yaml_model(obj: BaseModel, path: str | Path) -> None:
    """Write a resolved config as plain YAML with the same schema as the input."""
    Path(path).write_text(
        yaml.safe_dump(obj.model_dump(mode="json"), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
