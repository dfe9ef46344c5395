"""Safe YAML loading that remembers where every mapping key came from.

Config and rule errors must say "file:line: problem". PyYAML's SafeLoader builds plain dicts and
forgets positions, so this loader builds ``SourceDict`` objects carrying the line of each key.
Only SafeLoader constructors are used: no Python object tags, same guarantees as ``yaml.safe_load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class SourceDict(dict[str, Any]):
    """A dict that knows the file and line of each key (1-based) and of itself."""

    file: str = "<string>"
    line: int = 0
    key_where: dict[str, str]  # key -> "file:line" (after merging, keys may come from several files)

    def where(self, key: str | None = None) -> str:
        if key is not None and key in self.key_where:
            return self.key_where[key]
        return f"{self.file}:{self.line}" if self.line else self.file


class SourceList(list[Any]):
    file: str = "<string>"
    line: int = 0
    item_lines: list[int]

    def where(self, index: int | None = None) -> str:
        if index is not None and index < len(self.item_lines):
            return f"{self.file}:{self.item_lines[index]}"
        return f"{self.file}:{self.line}"


class YamlError(ValueError):
    """A file that is not valid YAML, with its file:line."""


# libyaml's parser when PyYAML was built with it (Debian's and PyPI's wheels are): the same safe
# constructors, several times faster, which a process AGI pays on every call.
_SAFE_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _loader_for(filename: str) -> type[yaml.SafeLoader]:
    class _Loader(_SAFE_BASE):  # type: ignore[valid-type,misc]
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> SourceDict:
        loader.flatten_mapping(node)
        result = SourceDict()
        result.file = filename
        result.line = node.start_mark.line + 1
        result.key_where = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise YamlError(f"{filename}:{key_node.start_mark.line + 1}: unsupported key")
            key = str(key)
            if key in result:
                raise YamlError(
                    f"{filename}:{key_node.start_mark.line + 1}: duplicate key '{key}'"
                )
            result[key] = loader.construct_object(value_node, deep=True)
            result.key_where[key] = f"{filename}:{key_node.start_mark.line + 1}"
        return result

    def construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> SourceList:
        result = SourceList(loader.construct_object(child, deep=True) for child in node.value)
        result.file = filename
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_sequence)
    return _Loader


def load_text(text: str, filename: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_loader_for(filename))  # noqa: S506 - SafeLoader subclass
    except YamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise YamlError(f"{filename}:{line}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{filename}: {exc}") from None


def load_file(path: Path, display: str | None = None) -> Any:
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise YamlError(f"{name}:1: not UTF-8 text") from None
    except OSError as exc:
        raise YamlError(f"{name}: cannot read: {exc.strerror}") from None
    return load_text(text, name)


def merge(base: Any, override: Any) -> Any:
    """Deep-merge two loaded documents: mappings merge key by key, anything else is replaced."""
    if not isinstance(base, SourceDict) or not isinstance(override, SourceDict):
        return override
    result = SourceDict(base)
    result.file, result.line = base.file, base.line
    result.key_where = dict(base.key_where)
    for key, value in override.items():
        result[key] = merge(base[key], value) if key in base else value
        result.key_where[key] = override.where(key)
    return result


def empty(where: str) -> SourceDict:
    """An empty mapping standing for a missing section; `where` is its parent's 'file:line'."""
    result = SourceDict()
    result.file, result.line, result.key_where = where, 0, {}
    return result
