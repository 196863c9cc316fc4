"""Reading YAML a user gave us: `yaml.safe_load` with bounds, so a careless or hostile file fails fast and clearly.

- files over `MAX_BYTES` and text that is not UTF-8 are refused before parsing;
- aliases may not expand past `MAX_NODES` values (a "billion laughs" file is a few hundred bytes), nor refer to
  themselves;
- a key given twice in one mapping is an error, not "the last one wins";
- `1e-4` is a float, as in YAML 1.2 (PyYAML's YAML 1.1 rules would make it the string '1e-4').
"""
from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, shown

MAX_BYTES = 1 << 20  # a pipeline file or target profile is a few kB
MAX_NODES = 100_000  # values in the document once every alias is expanded
FLOAT_1_2 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads exponent floats without a dot."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges defaults that explicit keys may override
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                        key_node.start_mark) from None
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    f"key {shown(key)} first given on line {first.start_mark.line + 1}", first.start_mark,
                    f"duplicate key {shown(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep)


    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An integer of at most 64 bits (a 5,000-digit one would only fail later, somewhere else)."""
        try:
            value = super().construct_yaml_int(node)
        except ValueError:
            digits = node.value.lstrip("+-").replace("_", "")
            problem = f"integer of {len(digits):,} digits; at most 64 bits are read" if digits.isdigit() else \
                f"not an integer: {shown(node.value)}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None
        if abs(value) >= 2**64:
            raise yaml.constructor.ConstructorError(None, None, f"integer of {value.bit_length()} bits; at most 64 bits are "
                                                                f"read", node.start_mark)
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        try:
            return super().construct_yaml_float(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(None, None, f"not a number: {shown(node.value)}", node.start_mark) from None


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
BoundedLoader.add_constructor("tag:yaml.org,2002:float", BoundedLoader.construct_yaml_float)
BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_1_2, list("-+0123456789"))


def expanded_size(node: yaml.Node, memo: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for with every alias expanded; stops early past MAX_NODES."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_nodes:
        raise ConfigError(f"line {node.start_mark.line + 1}: an alias refers to the value that contains it")
    open_nodes.add(key)
    children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
        node.value if isinstance(node, yaml.SequenceNode) else []
    total = 1
    for child in children:
        total += expanded_size(child, memo, open_nodes)
        if total > MAX_NODES:
            break
    open_nodes.discard(key)
    memo[key] = total
    return total


def parse(text: str) -> Any:
    """One YAML document, within the bounds above (raises yaml.YAMLError or ConfigError)."""
    loader = BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node, {}, set()) > MAX_NODES:
            raise ConfigError(f"its aliases expand to more than {MAX_NODES:,} values; write the values out instead")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    """Read and parse a YAML file; every problem is a ConfigError naming the file (and the line, for syntax)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ConfigError(f"{path}: not a regular file (a folder, device or pipe); give a YAML file")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: too large for a configuration file (more than {MAX_BYTES:,} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8") from None
    try:
        return parse(text)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a configuration file") from None
    except (ValueError, TypeError, OverflowError) as e:  # a value PyYAML's constructors cannot build (a date, ...)
        raise ConfigError(f"{path}: malformed YAML: {shown(str(e), 200)}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is None:
            raise ConfigError(f"{path}: malformed YAML: {shown(str(e), 200)}") from None
        lines = text.splitlines()
        line = lines[mark.line] if mark.line < len(lines) else ""
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        detail = f"{problem} ({context})" if context and "duplicate" in problem else problem
        raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: malformed YAML: {detail}\n"
                          f"  {mark.line + 1} | {line[:160]}") from None
