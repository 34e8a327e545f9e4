"""Build typed (frozen) dataclasses from plain YAML dicts, rejecting unknown keys by path.

Shared by `models.config` and `pipeline.config`: one validator for every config section, and one
YAML parser for config text (`parse_yaml`: safe_load with YAML 1.2's numbers and booleans, and an
error for a duplicate key).
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, mistyped or impossible; the message names the key path."""


# mtrec reads its YAML files (configs, table specs, overrides) like YAML 1.2, where PyYAML
# implements YAML 1.1, in four places where 1.1 surprises people:
# - `1e-5`, `3E4`, `1.0e5` are numbers (1.1 wants a dot and a signed exponent: `lr: 1e-3` was a string);
# - only true/false are booleans: `yes`, `no`, `on`, `off` are text (`equals: yes` matches "yes");
# - dates and times are text (`cutoffs: {valid: 2024-01-08}`), parsed where a key expects one;
# - an integer with a leading zero (`010`: octal 8 in 1.1) or a colon (`1:30`: base 60) is an error
#   asking to quote it or write it plainly, instead of a number the user did not mean.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_BOOL_TAG = "tag:yaml.org,2002:bool"
_DROPPED_TAGS = (_BOOL_TAG, "tag:yaml.org,2002:timestamp")


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader with the YAML 1.2 readings above, that also rejects a key repeated in one
    mapping (plain safe_load keeps the last one silently, so a second `train:` section would quietly
    replace the first)."""

    # Own copies of the resolver lists (add_implicit_resolver would append to SafeLoader's), without
    # YAML 1.1's yes/no/on/off booleans and timestamps.
    yaml_implicit_resolvers = {first: [(tag, regex) for tag, regex in resolvers if tag not in _DROPPED_TAGS]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        _refuse_ambiguous_number(self, node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        _refuse_ambiguous_number(self, node)
        return super().construct_yaml_float(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            line = key_node.start_mark.line + 1
            if seen:
                raise ConfigError(f"{self.name}: duplicate key {key!r} at line {line} "
                                  f"(first at line {first_line[key]})")
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _refuse_ambiguous_number(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> None:
    text = node.value.replace("_", "").lstrip("+-")
    leading_zero = len(text) > 1 and text[0] == "0" and text.isdigit()
    if leading_zero or ":" in text:
        meaning = "octal" if leading_zero else "base 60"
        raise ConfigError(f"{loader.name}: {node.value!r} at line {node.start_mark.line + 1} is ambiguous "
                          f"(YAML 1.1 reads it as {meaning}, {yaml.safe_load(node.value)}): quote it for text, "
                          f"or write the number without a leading zero or colon")


_ConfigLoader.add_implicit_resolver(_BOOL_TAG, _BOOL, list("tTfF"))
_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)
_ConfigLoader.add_constructor("tag:yaml.org,2002:float", _ConfigLoader.construct_yaml_float)


class _ConfigDumper(yaml.SafeDumper):
    """yaml.SafeDumper that quotes a string parse_yaml would read as a number (`'1e5'`); YAML 1.1's
    own readings (`'yes'`, `'010'`) are quoted by SafeDumper already."""

    yaml_implicit_resolvers = {first: list(resolvers) for first, resolvers in
                               yaml.SafeDumper.yaml_implicit_resolvers.items()}


_ConfigDumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def dump_yaml(data: Any, **options: Any) -> str:
    """`yaml.safe_dump(data, **options)` whose text parse_yaml reads back as `data`."""
    return yaml.dump(data, Dumper=_ConfigDumper, **options)


def parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load(text)` with the YAML 1.2 readings above, and a duplicate key as an error;
    errors name `source` (a file name, or e.g. "override 'a=b'")."""
    loader = _ConfigLoader(text)
    loader.name = source  # what marks (line/column of an error) report as the stream's name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        where = f" (line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1})" if e.problem_mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Recursively build dataclass `cls` from `data`; raise ConfigError naming `path.key` on problems."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path or '<root>'}: unknown key(s) {unknown} for {cls.__name__}; allowed: {sorted(fields)}"
        )
    kwargs = {name: _convert(hints[name], value, _join(path, name)) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise ConfigError(f"{path or '<root>'}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(path or "<root>")
    return obj


def to_dict(obj: Any) -> Any:
    """Inverse of from_dict, for writing the resolved config (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, path): _convert(vt, v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {tp}")
