"""A dataclass tree's documentation, read from its source: the comment after each field is its description.

Used by ``maskfeat CMD --keys`` (:func:`maskfeat.config.to_yaml` with descriptions): one place for the
documentation of every config key, the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from typing import Any

import yaml

__all__ = ["commented_yaml", "describe_fields"]


def _class_field_comments(source: str) -> dict[str, dict[str, str]]:
    """``{class name: {field: comment}}`` for the annotated fields of every top-level class in ``source``: the
    comment at the end of the field's line, with the comment-only lines right below that continue it."""
    lines = source.splitlines()
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    per_class: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = per_class.setdefault(node.name, {})
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            line = stmt.end_lineno
            parts = [comments[line]] if line in comments else []
            while line < len(lines) and lines[line].lstrip().startswith("#"):  # continuation lines (1-based: +1)
                line += 1
                parts.append(comments[line])
            fields[stmt.target.id] = " ".join(parts)
    return per_class


def describe_fields(root: type) -> dict[str, str]:
    """``{dotted key: description}`` for every leaf field of the dataclass tree ``root`` (nested dataclasses are
    sections), read from the source of ``root``'s module at run time. Empty when the source is not available."""
    try:
        source = inspect.getsource(sys.modules[root.__module__])
    except (OSError, TypeError):
        return {}
    per_class = _class_field_comments(source)
    out: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = per_class.get(cls.__name__, {}).get(f.name, "")

    walk(root, "")
    return out


def commented_yaml(tree: dict, about: dict[str, str]) -> str:
    """``tree`` (plain nested dicts) as YAML, each key followed by ``about[dotted key]`` as a ``# ...`` comment
    (still valid YAML: saved to a file, it loads back as the same tree)."""
    out: list[str] = []

    def entry(k: str, v: Any) -> str:  # one line: lists in flow style, [0.5, 1.0]
        if isinstance(v, list):
            return f"{k}: " + yaml.safe_dump(v, default_flow_style=True, width=1 << 30).strip()
        return yaml.safe_dump({k: v}, default_flow_style=False, width=1 << 30).strip()

    def emit(node: dict, prefix: str, indent: str) -> None:
        texts = {k: entry(k, v) for k, v in node.items() if not isinstance(v, dict)}
        column = len(indent) + min(max((len(t) for t in texts.values()), default=0), 40) + 2
        for k, v in node.items():
            if isinstance(v, dict):
                out.append(f"{indent}{k}:")
                emit(v, f"{prefix}{k}.", indent + "  ")
                continue
            text = about.get(prefix + k, "")
            if not text:
                out.append(indent + texts[k])
                continue
            head = f"{indent}{texts[k]}  ".ljust(column)
            # wrapped to 120 columns, the continuation lines as comments under the first one
            for i, part in enumerate(textwrap.wrap(text, max(40, 118 - len(head)))):
                out.append((head if i == 0 else " " * len(head)) + "# " + part)

    emit(tree, "", "")
    return "\n".join(out) + "\n"
