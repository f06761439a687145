"""The plumbing every compression method shares: which linear layers it touches, and where the model runs.

- `linear_targets`: the `nn.Linear` layers a method compresses, all but the skipped ones.
- `skip_names` / `is_skipped`: the skip rule. By default the output head stays in float or dense (the
  module `get_output_embeddings()` returns, and layers named 'lm_head', 'classifier' or 'score'); a
  name matches a layer's full name or its last part; a name that matches no linear layer is refused,
  so a typo (`"lm_haed"`) cannot quietly leave the head compressed.
- `submodule_at`: a submodule at a dotted path if it is of a given class, else None.
- `model_device`: the device a model's inputs go to.

It does not change a model. `toolkit.layers`, `toolkit.awq`, `toolkit.wanda`, `toolkit.shrink`,
`toolkit.sensitivity`, `toolkit.calibration` and `toolkit.evaluation` build on it.

>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
>>> list(linear_targets(model, skip="2"))
['0']
"""
from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable

import torch
from torch import nn

# Linear layers named like these (the last part of the module name) stay in
# float by default: task heads are small and compressing them costs the most accuracy.
DEFAULT_SKIP = ("lm_head", "classifier", "score")


def _default_skip(model: nn.Module) -> set[str]:
    """Names of the output head: the Hugging Face output embeddings plus `DEFAULT_SKIP` names."""
    skip = set(DEFAULT_SKIP)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is not None:
        skip.update(name for name, module in model.named_modules() if module is head)
    return skip


def is_skipped(name: str, skip: Collection[str]) -> bool:
    """Whether module `name` is skipped: `skip` holds its full name ('cls.predictions.decoder') or last part.

    Args:
        name: a module name as in `model.named_modules()`.
        skip: names, e.g. from `skip_names`; a single string is one name.

    Returns:
        True when the layer is skipped.
    """
    if isinstance(skip, str):
        skip = {skip}
    return name in skip or name.rpartition(".")[2] in skip


def skip_names(model: nn.Module, skip: str | Iterable[str] | None) -> set[str]:
    """The names of the layers a compression method keeps in float or dense.

    Args:
        model: the model the names belong to.
        skip: None (the output head, see the module docstring), one name as a string, or an iterable
            of names, each a layer's full name or last part.

    Returns:
        the set of names, each to match a layer's full name or its last part (`is_skipped`).

    Raises:
        TypeError: a name that is not a string.
        ValueError: a given name that matches no `nn.Linear` of `model` (e.g. a typo).
    """
    if skip is None:
        return _default_skip(model)
    names = {skip} if isinstance(skip, str) else set(skip)
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"skip must hold module names (strings), got {sorted(map(repr, names))}")
    linears = [name for name, module in model.named_modules(remove_duplicate=False) if isinstance(module, nn.Linear)]
    unknown = sorted(name for name in names if not any(is_skipped(linear, {name}) for linear in linears))
    if unknown:
        raise ValueError(f"skip names no nn.Linear of {type(model).__name__}: {unknown} "
                         "(give a layer's full name, e.g. 'cls.predictions.decoder', or its last part, e.g. 'lm_head')")
    return names


def linear_targets(model: nn.Module, skip: str | Iterable[str] | None = None) -> dict[str, nn.Linear]:
    """The `nn.Linear` layers of `model` that a compression method touches: all but the skipped ones.

    Args:
        model: any module.
        skip: as `skip_names`: None keeps the output head out, a string is one name, `()` keeps none out.

    Returns:
        dict from module name to layer, in module order (a layer registered twice, under its first name).

    Raises:
        ValueError: a `skip` name that matches no linear layer.
    """
    names = skip_names(model, skip)
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not is_skipped(name, names)}


def submodule_at(module: nn.Module, path: str, kind: type[nn.Module] = nn.Module) -> nn.Module | None:
    """The submodule at dotted `path` under `module` if it is a `kind`, else None.

    Args:
        module: where to look.
        path: a dotted name relative to `module`, e.g. 'self_attn.q_proj'.
        kind: the module class required (default: any module).

    Returns:
        the submodule, or None when there is none at `path` or it is not a `kind`.
    """
    try:
        found = module.get_submodule(path)
    except AttributeError:
        return None
    return found if isinstance(found, kind) else None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter, else of its first buffer (a model of quantized
    buffers only), else the CPU. For a Hugging Face model this is `model.device`."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device
