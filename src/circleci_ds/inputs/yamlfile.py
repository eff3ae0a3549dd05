"""Files people write (the fixture, the identities file): read bounded, parsed guarded, errors with lines.

Rules for untrusted input:
- A file is read up to its limit in bytes (a bound even for a device or a pipe); a larger one is
  refused, as is one that is not UTF-8.
- YAML anchors and aliases may be used, but what the document expands to is at most `max_nodes`
  nodes and never refers to itself: a "billion laughs" file is refused at once, before anything is
  built from it. Nesting too deep to build is refused too.
- Every problem is raised as the caller's own error class, its message naming the file and, where
  known, the line: `file:line: problem`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

MAX_NODES = 100_000


def read_text(path: Path, limit: int, error: type[Exception], noun: str) -> str:
    """The file's text; `error` if it is missing, unreadable, larger than `limit` bytes or not UTF-8."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise error(f"{path}: larger than {limit // 1024} KiB, the most a {noun} file may be")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {noun} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {noun} file: {exc.__class__.__name__}") from None


def parse(
    path: Path,
    text: str,
    error: type[Exception],
    *,
    loader: type[yaml.SafeLoader] = yaml.SafeLoader,
    max_nodes: int = MAX_NODES,
) -> tuple[Any, yaml.Node | None]:
    """The document's data and its node tree (for line numbers), parsed once."""
    parser = loader(text)
    try:
        root = parser.get_single_node()
        if root is not None:
            _check_expansion(path, root, error, max_nodes)
        return (parser.construct_document(root) if root is not None else None), root
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark else ""
        raise error(f"{path}{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: invalid YAML: {exc}") from None
    except RecursionError:
        raise error(f"{path}: invalid YAML: nested too deeply") from None
    finally:
        parser.dispose()


def _check_expansion(path: Path, root: yaml.Node, error: type[Exception], max_nodes: int) -> None:
    """Refuse a document whose aliases expand past `max_nodes` nodes or refer to themselves."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise error(f"{path}:{node.start_mark.line + 1}: invalid YAML: an alias refers to itself")
        open_.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        open_.discard(key)
        sizes[key] = min(total, max_nodes + 1)  # capped: the sum stays small however deep the aliases go
        return sizes[key]

    if size(root) > max_nodes:
        raise error(
            f"{path}: invalid YAML: its aliases expand to more than {max_nodes:,} nodes (an alias bomb?)"
        )


def describe(path: Path, root: yaml.Node | None, exc: ValidationError, prefix: tuple[Any, ...]) -> str:
    """The first validation error as `file:line: `field` problem`."""
    err = exc.errors()[0]
    loc = prefix + tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc)
    if err["type"] == "missing":
        problem = "is required"
        where = line_of(root, loc[:-1])
    else:
        problem = err["msg"].removeprefix("Value error, ")
        where = line_of(root, loc)
    return f"{path}{where}: `{dotted}` {problem}"


def line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    """`:N` for the YAML line of the node at `loc`, as deep as it exists; empty when unknown."""
    node, line = root, None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return f":{line}" if line else ""
