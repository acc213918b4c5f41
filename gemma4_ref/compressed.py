"""Reading the compressed-tensors `quantization_config` of a quantized checkpoint.

A compressed-tensors checkpoint says in `config.json` which modules are quantized and how
(compressed-tensors 0.20, `QuantizationConfig`): each entry of `config_groups` lists `targets`
(module class names such as "Linear", or `re:` regular expressions over module names) and the
weight quantization; `ignore` lists modules left out (the embeddings, vision and audio towers,
and `lm_head` in Google's exports). A module is quantized by the first group whose targets match
it, unless an `ignore` entry matches it too. A `re:` pattern matches at the start of the name.

This package runs the `pack-quantized` format: int4 or int8 weights, symmetric or asymmetric,
with `group` or `channel` scales, and no activation quantization (W4A16 / W8A16). Anything else
is refused with an error that names the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .int4 import QuantArgs

SUPPORTED_FORMAT = "pack-quantized"


@dataclass(frozen=True)
class _Group:
    name: str
    targets: tuple[str, ...]
    args: QuantArgs


def _matches(module: str, cls: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], module) is not None
    return pattern in (module, cls)


@dataclass(frozen=True)
class QuantizationConfig:
    """The parsed `quantization_config` block."""

    groups: tuple[_Group, ...]
    ignore: tuple[str, ...]
    source: str

    @classmethod
    def from_dict(cls, q: dict[str, Any], source: str) -> QuantizationConfig:
        where = f"{source}: quantization_config"
        method = q.get("quant_method")
        if method != "compressed-tensors":
            raise ConfigError(
                f"{where}.quant_method is {method!r}; only 'compressed-tensors' checkpoints "
                "(such as Google's -qat-w4a16-ct exports) are supported."
            )
        status = q.get("quantization_status", "compressed")
        if status != "compressed":
            raise ConfigError(
                f"{where}.quantization_status is {status!r}; only 'compressed' checkpoints, "
                "whose weights are stored packed, are supported."
            )
        for key in ("sparsity_config", "transform_config"):
            if q.get(key):
                raise ConfigError(
                    f"{where}.{key} is set; sparse or transformed weights are not supported."
                )
        top_format = q.get("format")
        groups = []
        for name, g in (q.get("config_groups") or {}).items():
            gw = f"{where}.config_groups.{name}"
            fmt = g.get("format") or top_format
            if fmt != SUPPORTED_FORMAT:
                raise ConfigError(
                    f"{gw}.format is {fmt!r}; this package reads only '{SUPPORTED_FORMAT}'."
                )
            for act in ("input_activations", "output_activations"):
                if g.get(act):
                    raise ConfigError(
                        f"{gw}.{act} is set; activation quantization (e.g. W8A8) is not "
                        "supported, only weight-only schemes such as W4A16."
                    )
            groups.append(_Group(name, tuple(g.get("targets") or ()), _weight_args(g, gw)))
        if not groups:
            raise ConfigError(f"{where} has no config_groups.")
        return cls(tuple(groups), tuple(q.get("ignore") or ()), source)

    def scheme_for(self, module: str, cls: str = "Linear") -> QuantArgs | None:
        """The quantization of a module, or None if no group targets it or it is ignored.

        As in compressed-tensors (`match_targets`), the most specific target wins, whatever
        the order of the groups: an exact module name, then a `re:` pattern, then a class name.
        """
        if any(_matches(module, cls, p) for p in self.ignore):
            return None
        for kind in ("name", "regex", "class"):
            for g in self.groups:
                for t in g.targets:
                    if _target_kind(t, module) == kind and _matches(module, cls, t):
                        return g.args
        return None


def _target_kind(target: str, module: str) -> str:
    if target.startswith("re:"):
        return "regex"
    return "name" if target == module else "class"


def _weight_args(g: dict[str, Any], where: str) -> QuantArgs:
    w = g.get("weights")
    if not isinstance(w, dict):
        raise ConfigError(f"{where}.weights is missing; weight-only quantization needs it.")
    kind = w.get("type", "int")
    if kind != "int":
        raise ConfigError(f"{where}.weights.type is {kind!r}; only 'int' weights are supported.")
    bits = w.get("num_bits")
    if bits not in (4, 8):
        raise ConfigError(f"{where}.weights.num_bits is {bits!r}; 4 and 8 are supported.")
    strategy = w.get("strategy")
    group = w.get("group_size")
    if strategy == "group":
        if not isinstance(group, int) or group <= 0 or group % 2:
            raise ConfigError(
                f"{where}.weights.group_size is {group!r}; the group strategy needs a positive "
                "even group size (32 and 128 are usual)."
            )
    elif strategy == "channel":
        group = None
    else:
        raise ConfigError(
            f"{where}.weights.strategy is {strategy!r}; 'group' and 'channel' are supported."
        )
    if w.get("dynamic"):
        raise ConfigError(f"{where}.weights.dynamic is true; only static weights are supported.")
    if w.get("actorder") not in (None, "static", "weight"):
        raise ConfigError(
            f"{where}.weights.actorder is {w.get('actorder')!r}; activation-ordered groups "
            "(GPTQ 'group' order) need a g_idx, which is not supported."
        )
    return QuantArgs(bits, group, bool(w.get("symmetric", True)), strategy)
