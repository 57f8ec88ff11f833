"""``step``'s return value: an ordered mapping that behaves like diffusers' ``BaseOutput``.

Code written for diffusers handles its outputs as dataclasses (``out.prev_sample``), as tuples
(``out[0]``, ``out.to_tuple()``) and as ordered dicts (``out["prev_sample"]``, ``keys()``,
``items()``, iteration, ``out == {...}``). ``BaseOutput`` gives a dataclass all three faces, with
diffusers' rules: fields that are ``None`` are left out of the mapping and the tuple, and the
mapping refuses deletion and the bulk-mutating dict methods. It is registered as a torch pytree
node, as diffusers registers its outputs (for ``DistributedDataParallel(static_graph=True)``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

_set_attribute = object.__setattr__


class BaseOutput(OrderedDict[str, Any]):
    """An ordered mapping of a dataclass's non-``None`` fields, indexable by key, position or slice."""

    def __init_subclass__(cls) -> None:
        """Register each output class as a pytree node (its values are the leaves, its keys the context)."""
        super().__init_subclass__()
        pytree.register_pytree_node(
            cls,
            lambda out: (list(out.values()), list(out.keys())),
            lambda values, keys: cls(**dict(zip(keys, values, strict=True))),
            serialized_type_name=f"{cls.__module__}.{cls.__name__}",
        )

    def __post_init__(self) -> None:
        """Fill the mapping from the fields, in declaration order, skipping those that are ``None``."""
        names = type(self).__dict__.get("_field_names")
        if names is None:  # once per class: ``fields()`` is slow
            names = tuple(f.name for f in fields(self))  # type: ignore[arg-type]
            type.__setattr__(type(self), "_field_names", names)
        for name in names:
            value = getattr(self, name)  # an instance attribute or a slot
            if value is not None:
                OrderedDict.__setitem__(self, name, value)

    def __getitem__(self, key: Any) -> Any:
        """A string reads the mapping (``KeyError`` for a ``None`` field); anything else indexes ``to_tuple()``."""
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        """Setting a field keeps the mapping in step (a ``None`` value leaves the mapping as it is)."""
        if value is not None and OrderedDict.__contains__(self, name):
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        """Setting a key keeps the attribute in step."""
        OrderedDict.__setitem__(self, key, value)
        object.__setattr__(self, key, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"cannot delete {key!r} from a {type(self).__name__}")

    def _refuse(self, method: str) -> Any:
        raise TypeError(f"cannot use {method} on a {type(self).__name__}")

    def pop(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("pop")

    def popitem(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("popitem")

    def setdefault(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("setdefault")

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._refuse("update")

    def clear(self) -> None:
        self._refuse("clear")

    def __reduce__(self) -> Any:
        """Pickle and copy through the dataclass constructor, so the copy is built like the original."""
        if not is_dataclass(self):
            return super().__reduce__()
        return type(self), tuple(getattr(self, field.name) for field in fields(self))

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-``None`` fields in order (what ``step(..., return_dict=False)`` returns)."""
        return tuple(self[k] for k in self.keys())


@dataclass(init=False, slots=True)
class KDPM2DiscreteSchedulerOutput(BaseOutput):
    """What ``step`` returns: the next sample and this call's denoised estimate.

    The fields are slots, not instance-dict entries: ``step`` builds one per call, and an instance
    dict would cost an allocation and a deallocation each time (``RawStepOutput``).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __init__(self, prev_sample: torch.Tensor, pred_original_sample: torch.Tensor | None = None) -> None:
        """The dataclass constructor, written out: it skips ``__setattr__``."""
        _set_attribute(self, "prev_sample", prev_sample)
        _set_attribute(self, "pred_original_sample", pred_original_sample)
        OrderedDict.__setitem__(self, "prev_sample", prev_sample)
        if pred_original_sample is not None:
            OrderedDict.__setitem__(self, "pred_original_sample", pred_original_sample)


class RawStepOutput(BaseOutput):
    """``KDPM2DiscreteSchedulerOutput``'s layout (same base, same slots) with C item and attribute stores.

    ``step`` fills one through ``OrderedDict``'s own ``__setitem__`` and plain slot stores (no
    Python method runs), then assigns ``__class__ = KDPM2DiscreteSchedulerOutput``: the
    constructor's object for half its cost.
    """

    __slots__ = ("pred_original_sample", "prev_sample")  # CPython sorts slots: the order is the output's
    __setitem__ = OrderedDict.__setitem__
    __setattr__ = object.__setattr__  # type: ignore[assignment]
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def step_output(
    prev_sample: torch.Tensor,
    pred_original_sample: torch.Tensor,
    kind: type[KDPM2DiscreteSchedulerOutput] = KDPM2DiscreteSchedulerOutput,
) -> KDPM2DiscreteSchedulerOutput:
    """``kind(prev_sample, pred_original_sample)`` for two tensors, without ``__init__``.

    ``kind`` is ``KDPM2DiscreteSchedulerOutput`` or a subclass that adds no field (its slots are empty).
    """
    out = RawStepOutput()
    out["prev_sample"] = prev_sample
    out["pred_original_sample"] = pred_original_sample
    out.prev_sample = prev_sample
    out.pred_original_sample = pred_original_sample
    out.__class__ = kind  # type: ignore[assignment]
    return out  # type: ignore[return-value]
