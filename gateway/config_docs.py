"""The configuration reference in docs/config.md, generated from the schema so the two cannot drift.

`python -m gateway.config_docs --write docs/config.md` refreshes the part between the markers; a test
fails when it is stale.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gateway.config import ENV_PREFIX, GatewayConfig, ReplicaConfig

BEGIN = "<!-- BEGIN GENERATED CONFIG REFERENCE -->"
END = "<!-- END GENERATED CONFIG REFERENCE -->"


def _type_name(annotation: typing.Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    if origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return "list of entries (below)"
        return f"list of {_type_name(item)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else f"`{value}`"
    if field.default is PydanticUndefined:
        return "required"
    return "" if field.default is None else f"`{field.default}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{key}.")
            continue
        env = ENV_PREFIX + key.upper().replace(".", "__")
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(annotation)} | {_default(field)} | {description} | `{env}` |")
    return rows


def render_reference() -> str:
    header = ["| key | type | default | meaning | environment |", "| --- | --- | --- | --- | --- |"]
    replica_header = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    replica_rows = [row.rsplit(" | `", 1)[0] + " |" for row in _rows(ReplicaConfig, "")]
    return "\n".join(
        [BEGIN, "", "### All keys", "", *header, *_rows(GatewayConfig, ""), "",
         "### Each entry of `replicas`", "", *replica_header, *replica_rows, "", END]
    )  # fmt: skip


def refresh(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render_reference() + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", metavar="FILE", help="refresh the generated part of FILE in place")
    args = parser.parse_args()
    if args.write:
        path = Path(args.write)
        path.write_text(refresh(path.read_text()))
    else:
        sys.stdout.write(render_reference() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
