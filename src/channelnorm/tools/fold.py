"""Fold eval-mode channel norms into the convolution or linear layer that feeds them.

A norm with running statistics in eval mode is a per-channel affine map
``y = (x - mean) / sqrt(var + eps) * weight + bias``; when its input is the output of a
``Conv1d/2d/3d`` or ``Linear`` along that layer's output-feature axis, that output goes nowhere
else, and the layer's weight is read nowhere else, the map can move into the layer's weight and
bias and the norm becomes ``nn.Identity``. Everything here exists to make sure those conditions
hold, so that folding never changes what the model computes; what cannot be shown is left alone
and reported with the reason. Both modules must also compute what their class computes
(`channelnorm.tools.known`): a subclass with its own ``forward``, a replaced instance ``forward``,
hooks or a parametrized weight are left.

Two ways to find the layer that feeds each norm:

* without an example input, only ``nn.Sequential``'s own forward is known: a consecutive pair in a
  plain ``nn.Sequential`` that is reached from the model through plain ``nn.Sequential``
  containers only is a real data edge, and nothing else sees the layer's output or reads its
  weight. Below a custom ``forward`` (the model's own, a residual block's), that code may also call
  the layer, read its weight (a tied-weight decoder) or run part of the Sequential, which only an
  example run shows, so those pairs are left;
* with an example input, the model is run once while module hooks record which layer's output
  tensor enters which norm, and a ``TorchFunctionMode`` records every other operation that reads
  that output (a skip connection, a second norm, ...) or the layer's weight and bias outside the
  layer's own call. Norms called from a custom ``forward`` (``self.bn1(self.conv1(x))``) are found
  this way. A layer output the model still holds after the forward returned (stored on a module, in
  a list, in an object it returns) is used elsewhere too. The folded model is then run on the same
  input and every tensor reachable from its output must match the original's within a tolerance
  scaled to that tensor, or every fold is undone.

A weight or bias registered in a second module (tied weights) is never folded: the layer would get
a new one and the tie would end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import warnings
import weakref
from typing import Any, Iterator, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from ..modules import AffineNorm, ChannelNorm, ChannelNormAct, FrozenChannelNorm, GroupNormAct, SyncChannelNorm
from ._model_checks import refuse_training_norms, refuse_uninitialized_norms
from .known import behaves_as, known_norm_classes, nearest_known

__all__ = ["fold", "FoldReport", "FoldedPair", "LeftNorm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PRODUCERS = _CONVS + (nn.Linear,)
_FUSED_BLOCKS = (ChannelNormAct, GroupNormAct)
_NORM_LIKE = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, AffineNorm)
# Norms whose eval-mode forward with running statistics is a fixed per-channel affine map.
_FOLDABLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, ChannelNorm, SyncChannelNorm,
             FrozenChannelNorm)
# Ranks considered when the producer's output rank is unknown (no example input). A fixed
# non-negative channel axis a is wrong at rank a + 2 already, so a small bound decides every axis.
_MAX_RANK = 16


@dataclasses.dataclass(frozen=True)
class FoldedPair:
    """A norm folded into the layer before it (qualified module names inside the model)."""

    layer: str
    norm: str


@dataclasses.dataclass(frozen=True)
class LeftNorm:
    """A norm layer that was not folded, and why."""

    norm: str
    reason: str


@dataclasses.dataclass
class FoldReport:
    """What ``fold(..., return_report=True)`` did.

    Attributes:
        method: ``"sequential"`` (no example input: only ``nn.Sequential`` order was followed) or
            ``"traced"`` (the model was run on the example input to find the real data edges).
        folded: the pairs folded, in model order; each norm is now an ``nn.Identity``.
        left: every norm layer of the model that was not folded, with the reason.
        max_abs_diff: with an example input, the largest difference between the folded and the
            original model's outputs on it (``None`` without one, or when nothing was folded).
    """

    method: str
    folded: list[FoldedPair] = dataclasses.field(default_factory=list)
    left: list[LeftNorm] = dataclasses.field(default_factory=list)
    max_abs_diff: Optional[float] = None

    @property
    def num_folded(self) -> int:
        """How many norms were folded (``len(folded)``)."""
        return len(self.folded)

    def __str__(self) -> str:
        lines = [f"fold ({self.method}): {len(self.folded)} folded, {len(self.left)} left"]
        lines += [f"  folded {p.norm} into {p.layer}" for p in self.folded]
        lines += [f"  left {n.norm}: {n.reason}" for n in self.left]
        return "\n".join(lines)


# ---------------------------------------------------------------- what a pair must satisfy

def _fixed_ranks(norm: nn.Module) -> Optional[set[int]]:
    """Input ranks a torch batch norm accepts (``None``: any rank >= 2, as channelnorm's norms)."""
    if isinstance(norm, nn.BatchNorm1d):
        return {2, 3}
    if isinstance(norm, nn.BatchNorm2d):
        return {4}
    if isinstance(norm, nn.BatchNorm3d):
        return {5}
    return None


def _producer_ranks(layer: nn.Module) -> set[int]:
    if isinstance(layer, _CONVS):
        k = len(layer.kernel_size)
        return {k + 1, k + 2}  # unbatched (C, *spatial) or batched (N, C, *spatial)
    return set(range(2, _MAX_RANK + 1))


def _feature_axis(layer: nn.Module, rank: int) -> int:
    """The axis that holds ``layer``'s output features in an output of ``rank`` dimensions."""
    if isinstance(layer, _CONVS):
        return rank - len(layer.kernel_size) - 1
    return rank - 1


def _axis_problem(layer: nn.Module, norm: nn.Module, rank: Optional[int]) -> Optional[str]:
    """Why the norm's channel axis may not be the layer's output-feature axis (``None``: it is)."""
    axis = getattr(norm, "channel_axis", 1)
    if rank is not None:
        if axis % rank == _feature_axis(layer, rank):
            return None
        return (f"it normalizes axis {axis % rank} of the {rank}-D output of {type(layer).__name__}, whose "
                f"features are on axis {_feature_axis(layer, rank)}")
    ranks = _producer_ranks(layer)
    fixed = _fixed_ranks(norm)
    if fixed is not None:
        ranks &= fixed
    ranks = {r for r in ranks if -r <= axis < r}
    wrong = sorted(r for r in ranks if axis % r != _feature_axis(layer, r))
    if not wrong:
        return None
    return (f"channel axis {axis} is not {type(layer).__name__}'s feature axis for {wrong[0]}-D outputs, "
            f"and without example_input the output rank is unknown")


def _norm_problem(norm: nn.Module) -> Optional[str]:
    """Why ``norm`` is not a fixed per-channel affine map (``None``: it is)."""
    if isinstance(norm, _FUSED_BLOCKS):
        return "fused norm + activation block (its activation and residual input cannot move into a layer)"
    cls, problem = behaves_as(norm, known_norm_classes())
    if cls not in _FOLDABLE:
        return f"{type(norm).__name__} is not a norm with running statistics that fold supports"
    if problem is not None:
        return f"{problem}, so it need not be the affine map of {cls.__name__} that fold would move into the layer"
    if isinstance(getattr(norm, "channel_axis", 1), tuple):
        return f"its statistics are per combination of the axes {norm.channel_axis}, not per output feature"
    return _statistics_problem(norm)


def _statistics_problem(norm: nn.Module) -> Optional[str]:
    """Why a foldable norm class does not use fixed, finite running statistics now (``None``: it does)."""
    if not isinstance(norm, FrozenChannelNorm):
        if norm.training:
            return "in training mode (uses batch statistics)"
        if not norm.track_running_stats or norm.running_mean is None:
            return "no running statistics (uses batch statistics in eval mode too)"
    stats = [norm.running_mean, norm.running_var]
    if not all(bool(torch.isfinite(t).all()) for t in stats):
        return "running statistics are not finite"
    return None


def _looks_foldable(norm: nn.Module) -> bool:
    """An eval-mode norm of a foldable class (or a subclass) with finite running statistics: a caller
    expects it folded, so leaving it is worth a warning."""
    return nearest_known(norm, known_norm_classes()) in _FOLDABLE and _statistics_problem(norm) is None


def _pair_problem(layer: nn.Module, norm: nn.Module, rank: Optional[int]) -> Optional[str]:
    """Why folding ``norm`` into ``layer`` could change the model (``None``: it cannot)."""
    problem = _norm_problem(norm)
    if problem is not None:
        return problem
    cls, problem = behaves_as(layer, _PRODUCERS)
    if cls is None:
        return f"fed by {type(layer).__name__}, not by a Conv1d/2d/3d or Linear"
    if problem is not None:
        return f"fed by {type(layer).__name__}, which need not compute what {cls.__name__} computes: {problem}"
    out = layer.out_channels if isinstance(layer, _CONVS) else layer.out_features
    channels = getattr(norm, "num_features", getattr(norm, "num_channels", None))
    if out != channels:
        return f"{type(layer).__name__} has {out} output features, the norm {channels} channels"
    if norm.running_mean.dtype != layer.weight.dtype or norm.running_mean.device != layer.weight.device:
        return (f"norm statistics ({norm.running_mean.dtype}, {norm.running_mean.device}) and layer weight "
                f"({layer.weight.dtype}, {layer.weight.device}) differ in dtype or device")
    return _axis_problem(layer, norm, rank)


# ---------------------------------------------------------------- folding (and undoing it)

@dataclasses.dataclass
class _Undo:
    layer: nn.Module
    weight: nn.Parameter
    bias: Optional[nn.Parameter]
    names: list[tuple[nn.Module, str]]  # every (parent, attribute) that held the norm
    norm: nn.Module

    def __call__(self) -> None:
        self.layer.weight, self.layer.bias = self.weight, self.bias
        for parent, attr in self.names:
            setattr(parent, attr, self.norm)


def _fold_into(layer: nn.Module, norm: nn.Module) -> None:
    """Replace ``layer``'s weight and bias by those of ``norm ∘ layer`` (computed in float64)."""
    with torch.no_grad():
        f64 = torch.float64
        scale = torch.rsqrt(norm.running_var.to(f64) + norm.eps)
        if getattr(norm, "weight", None) is not None:
            scale = scale * norm.weight.to(f64)
        shift = -norm.running_mean.to(f64) * scale
        if getattr(norm, "bias", None) is not None:
            shift = shift + norm.bias.to(f64)
        w = layer.weight
        new_w = w.to(f64) * scale.view([-1] + [1] * (w.ndim - 1))
        old_b = layer.bias.to(f64) if layer.bias is not None else torch.zeros_like(scale)
        new_b = old_b * scale + shift
        # New Parameter objects: the originals stay intact for undo (and for any optimizer holding them).
        layer.weight = nn.Parameter(new_w.to(w.dtype).contiguous(memory_format=_memory_format(w)),
                                    requires_grad=w.requires_grad)
        layer.bias = nn.Parameter(new_b.to(w.dtype), requires_grad=w.requires_grad)


def _memory_format(w: torch.Tensor) -> torch.memory_format:
    if w.ndim == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        return torch.channels_last
    if w.ndim == 5 and w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def _registrations(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id of every module inside ``model`` -> every (parent, attribute name) it is registered under."""
    where: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in model.modules():
        for attr, child in parent._modules.items():
            if child is not None:
                where.setdefault(id(child), []).append((parent, attr))
    return where


def _tensor_owners(model: nn.Module) -> dict[int, list[str]]:
    """id of every parameter and buffer -> the qualified names of the distinct modules holding it."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for tensor in list(module._parameters.values()) + list(module._buffers.values()):
            if tensor is not None:
                owners.setdefault(id(tensor), []).append(name or "(the model)")
    return owners


def _tied_problem(layer: nn.Module, owners: dict[int, list[str]]) -> Optional[str]:
    """Why ``layer``'s weight or bias is also another module's (``None``: neither is)."""
    for attr in ("weight", "bias"):
        tensor = getattr(layer, attr, None)
        holders = owners.get(id(tensor), []) if tensor is not None else []
        if len(holders) > 1:
            return (f"the layer's {attr} is also registered in {', '.join(holders[1:])} (tied weights): folding "
                    f"gives the layer a new {attr}, which would end the tie")
    return None


# ---------------------------------------------------------------- finding the pairs

def _norm_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _NORM_LIKE + _FUSED_BLOCKS) and name]


def _shared(model: nn.Module) -> set[int]:
    """ids of modules registered under more than one name (folding one place would change the others)."""
    seen: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        seen[id(m)] = seen.get(id(m), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def _sequential_edges(model: nn.Module) -> tuple[dict[str, tuple[str, Optional[int]]], dict[str, str]]:
    """norm name -> (producer name, None) for consecutive pairs inside plain ``nn.Sequential`` containers
    reached from the model through plain ``nn.Sequential`` containers only.

    Without running the model, only ``nn.Sequential``'s own forward is known: it calls each child once,
    in order, on the previous child's output, and reads nothing else. A module with a custom forward
    anywhere above the pair may also call the layer directly, read its weight (a tied-weight decoder),
    or run a slice of the Sequential, and only an example run shows that."""
    edges: dict[str, tuple[str, Optional[int]]] = {}
    why_not: dict[str, str] = {}
    for name, norm in model.named_modules():
        if not name or not isinstance(norm, _NORM_LIKE + _FUSED_BLOCKS):
            continue
        parent_name, _, attr = name.rpartition(".")
        blocker = _custom_forward_above(model, parent_name)
        if blocker is not None:
            why_not[name] = blocker
            continue
        # _modules, not named_children(): a child registered twice in one Sequential (a shared ReLU)
        # runs at each of its places, and named_children() would list it once and shift the order.
        children = list(model.get_submodule(parent_name)._modules.items())
        index = next(i for i, (child_name, _) in enumerate(children) if child_name == attr)
        if index == 0:
            why_not[name] = "first in its nn.Sequential: its input comes from outside it; pass example_input"
        else:
            edges[name] = (f"{parent_name}.{children[index - 1][0]}" if parent_name else children[index - 1][0], None)
    return edges, why_not


def _custom_forward_above(model: nn.Module, container_name: str) -> Optional[str]:
    """Why the path from ``model`` down to ``container_name`` is not plain ``nn.Sequential`` all the way
    (``None``: it is), for the report."""
    parts = container_name.split(".") if container_name else []
    for depth in range(len(parts) + 1):
        where = ".".join(parts[:depth])
        module = model.get_submodule(where)
        _, problem = behaves_as(module, (nn.Sequential,), hooks_matter=False)  # hooks there see only its ends
        if problem is not None:
            label = f"{where} ({type(module).__name__})" if where else f"the model ({type(module).__name__})"
            return (f"called from a custom forward ({label}), which may also call the layer or read its weight; "
                    f"without example_input only pairs in nn.Sequential containers reached through nn.Sequential "
                    f"containers from the model are folded; pass example_input")
    return None


# Operations that read only a tensor's metadata, not its values: they do not make a use.
_METADATA_FUNCS = {torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.stride,
                   torch.Tensor.is_contiguous, torch.Tensor.is_floating_point, torch.Tensor.__len__}
_METADATA_PROPERTIES = {"shape", "ndim", "dtype", "device", "layout", "requires_grad", "is_cuda"}


# Operations that turn tensor values into Python values: a forward that does this (outside the norms)
# may branch on the data, so the graph seen on the example need not hold for other inputs.
_VALUE_READS = {torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__int__,
                torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.numpy, torch.equal, torch.allclose,
                torch.is_nonzero}


def _is_metadata(func) -> bool:
    if func in _METADATA_FUNCS:
        return True
    owner = getattr(func, "__self__", None)  # a property getter arrives as <descriptor>.__get__
    return getattr(func, "__name__", "") == "__get__" and getattr(owner, "__name__", None) in _METADATA_PROPERTIES


@dataclasses.dataclass
class _Output:
    producer: str
    tensor: torch.Tensor  # held so that its id() cannot be reused during the run
    readers: list = dataclasses.field(default_factory=list)  # norm name, or None for "outside any norm"


class _ReadRecorder(TorchFunctionMode):
    """Records, for every recorded producer output, which norm call (or ``None``) reads it, and every
    operation that reads a producer's weight or bias outside that producer's own call."""

    def __init__(self, outputs: dict[int, _Output], norm_stack: list[str],
                 weights: dict[int, tuple[str, torch.Tensor]], producer_stack: list[str]) -> None:
        super().__init__()
        self.outputs, self.norm_stack = outputs, norm_stack
        self.weights, self.producer_stack = weights, producer_stack
        self.value_reads: list[str] = []  # names of value-to-Python conversions outside any norm
        self.foreign_weight_reads: dict[str, str] = {}  # producer name -> first operation reading its weight elsewhere

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _VALUE_READS and not self.norm_stack:
            self.value_reads.append(getattr(func, "__name__", str(func)))
        if not _is_metadata(func):
            reader = self.norm_stack[-1] if self.norm_stack else None
            inside = self.producer_stack[-1] if self.producer_stack else None
            for leaf in pytree.tree_leaves((args, kwargs)):
                if not isinstance(leaf, torch.Tensor):
                    continue
                record = self.outputs.get(id(leaf))
                if record is not None and record.tensor is leaf:
                    record.readers.append(reader)
                owner = self.weights.get(id(leaf))
                if owner is not None and owner[1] is leaf and owner[0] != inside:
                    self.foreign_weight_reads.setdefault(owner[0], getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


# Python values an output may hold besides tensors; compared with ==.
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size, type(Ellipsis))


def _output_leaves(output: Any) -> tuple[list, Optional[str]]:
    """Every tensor and plain value reachable from a model output, in a fixed order, walking tuples
    (named ones too), lists, dicts, dataclasses and other objects' attributes; and the first value
    that cannot be walked (a module, an object without attributes), or None. The verification compares
    these leaves, so nothing a caller can reach from the output goes unchecked."""
    leaves: list = []
    seen: set[int] = set()

    def walk(obj: Any) -> Optional[str]:
        if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN):
            leaves.append(obj)
            return None
        if id(obj) in seen:  # a shared or cyclic reference: its leaves are already listed once
            return None
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            return f"a {type(obj).__name__} module"
        if isinstance(obj, (list, tuple)):
            children = list(obj)
        elif isinstance(obj, dict):
            children = [v for kv in obj.items() for v in kv]
        elif dataclasses.is_dataclass(obj):
            children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            children = [v for kv in vars(obj).items() for v in kv]
        else:
            return f"a {type(obj).__name__}"
        leaves.append(type(obj))  # the structure is compared too
        for child in children:
            problem = walk(child)
            if problem is not None:
                return problem
        return None

    return leaves, walk(output)


def _call(model: nn.Module, example_input: Any):
    return model(*example_input) if isinstance(example_input, tuple) else model(example_input)


def _traced_edges(model: nn.Module, example_input: Any) -> tuple[dict[str, tuple[str, Optional[int]]],
                                                                   dict[str, str], Any]:
    """Run the model once; return (norm name → (producer name, output rank), reasons, model output)."""
    names = {id(m): n for n, m in model.named_modules()}
    producers = [m for m in model.modules() if isinstance(m, _PRODUCERS)]
    norms = [m for m in model.modules() if isinstance(m, _NORM_LIKE + _FUSED_BLOCKS) and m is not model]
    outputs: dict[int, _Output] = {}
    calls: dict[str, int] = {}
    norm_inputs: dict[str, tuple[Any, bool]] = {}  # norm name -> (first input, called with one tensor only)
    norm_stack: list[str] = []
    producer_stack: list[str] = []
    weights = {id(t): (names[id(m)], t) for m in producers for t in (m.weight, m.bias) if t is not None}

    def before_producer(module, args):
        producer_stack.append(names[id(module)])

    def after_producer(module, args, output):
        producer_stack.pop()
        name = names[id(module)]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(output, torch.Tensor):
            outputs[id(output)] = _Output(name, output)

    def before_norm(module, args, kwargs):
        name = names[id(module)]
        calls[name] = calls.get(name, 0) + 1
        norm_inputs.setdefault(name, (args[0] if args else None, len(args) == 1 and not kwargs))
        norm_stack.append(name)

    def after_norm(module, args, output):
        norm_stack.pop()

    handles = [m.register_forward_pre_hook(before_producer) for m in producers]
    handles += [m.register_forward_hook(after_producer, always_call=True) for m in producers]
    handles += [m.register_forward_pre_hook(before_norm, with_kwargs=True) for m in norms]
    handles += [m.register_forward_hook(after_norm, always_call=True) for m in norms]
    try:
        with _ReadRecorder(outputs, norm_stack, weights, producer_stack) as recorder:
            result = _call(model, example_input)
    finally:
        for h in handles:
            h.remove()

    returned = {id(t) for t in _output_leaves(result)[0] if isinstance(t, torch.Tensor)}
    edges: dict[str, tuple[str, Optional[int]]] = {}
    why_not: dict[str, str] = {}
    branching = sorted(set(recorder.value_reads))
    for name in (names[id(m)] for m in norms):
        if branching:
            why_not[name] = (f"the forward turns tensor values into Python values ({', '.join(branching)}), so "
                             f"its path, and which layer feeds which norm, may depend on the input")
            continue
        if name not in norm_inputs:
            why_not[name] = "not called on example_input"
            continue
        if calls[name] > 1:
            why_not[name] = f"called {calls[name]} times on example_input (a shared norm)"
            continue
        x, plain = norm_inputs[name]
        record = outputs.get(id(x)) if isinstance(x, torch.Tensor) else None
        if record is None or record.tensor is not x:
            why_not[name] = "its input is not the output of a Conv1d/2d/3d or Linear"
        elif not plain:
            why_not[name] = "called with more than its input tensor (e.g. a mask)"
        elif calls[record.producer] > 1:
            why_not[name] = f"{record.producer} is called {calls[record.producer]} times on example_input"
        elif any(r != name for r in record.readers) or id(x) in returned:
            why_not[name] = f"the output of {record.producer} is also used outside this norm (e.g. a skip path)"
        elif record.producer in recorder.foreign_weight_reads:
            why_not[name] = (f"the weight of {record.producer} is also read outside its own call "
                             f"({recorder.foreign_weight_reads[record.producer]}; e.g. a tied-weight decoder), "
                             f"which would then read the folded weight")
        else:
            edges[name] = (record.producer, x.ndim)
    x = record = None
    return _drop_escaped(edges, why_not, outputs, norm_inputs), why_not, result


def _drop_escaped(edges: dict[str, tuple[str, Optional[int]]], why_not: dict[str, str],
                  outputs: dict[int, _Output], norm_inputs: dict) -> dict[str, tuple[str, Optional[int]]]:
    """Leave every pair whose layer output is still alive once the forward has returned and fold's own
    references are dropped: the model kept it somewhere (a list, a module attribute, an object in its
    output), where it would see the unnormalized values change after folding. No operation reads it
    there, so only its lifetime shows the use."""
    producers = {record.producer: weakref.ref(record.tensor) for record in outputs.values()}
    outputs.clear()
    norm_inputs.clear()
    gc.collect()  # reference cycles left by the forward are not a use
    kept = {}
    for name, (producer, rank) in edges.items():
        if producers[producer]() is not None:
            why_not[name] = (f"the output of {producer} is also used outside this norm: it is still referenced "
                             f"after the forward returned (stored on a module, in a list, or in an object of the "
                             f"output)")
        else:
            kept[name] = (producer, rank)
    return kept


# ---------------------------------------------------------------- running the model without side effects

@contextlib.contextmanager
def _no_side_effects(model: nn.Module, example_input: Any) -> Iterator[None]:
    """Run without autograd, restore every buffer (running statistics of training-mode norms) afterwards,
    and replay the same random numbers (dropout in training mode) on every run."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({t.device.index or 0 for t in pytree.tree_leaves(example_input)
                      if isinstance(t, torch.Tensor) and t.device.type == "cuda"})
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _precision_eps(t: torch.Tensor) -> float:
    """Machine epsilon of the arithmetic on ``t``: its dtype's, or TF32's (2^-10) for float32 on CUDA,
    where cuDNN convolutions may run in TF32 (its default)."""
    if t.dtype == torch.float32 and t.device.type == "cuda":
        return 2.0 ** -10
    return torch.finfo(t.dtype).eps


def _compare_outputs(result: Any, reference: Any, weight_eps: float) -> tuple[float, Optional[str]]:
    """(largest |result - reference| over every floating tensor reachable from the outputs, why they
    differ more than folding can explain or ``None``).

    Each tensor is held to its own tolerance, ``sqrt(eps) * max|reference tensor|``, where ``eps`` is
    the coarser of the tensor's precision and the folded layers' (``weight_eps``). Why: a correct fold
    changes the rounding of each folded layer once (its weight is rounded to its dtype, the norm's own
    output rounding disappears); measured on the ResNet-18 of tests/tools/test_fold.py (20 folds, torch
    2.13 CPU) at 1.8 eps of the largest logit in float64 and float32 and 0.9 eps in float16 and
    bfloat16. sqrt(eps) leaves a factor 1/sqrt(eps) on top (11 in bfloat16, 2900 in float32) for deeper
    models and for cancellation, while a wrong fold (a statistic or weight off by a percent) moves the
    tensors it reaches far beyond sqrt(eps) in float32/float64 (3.5e-4/1.5e-8). A tolerance scaled to
    the largest output instead would let a small output change by any fraction. In float16/bfloat16 the
    check catches only changes above 3 %/9 % of a tensor: there the structural checks carry the proof.
    Non-finite values must sit at the same places; integer, bool and non-tensor values must be equal.
    """
    (leaves_a, opaque_a), (leaves_b, opaque_b) = _output_leaves(result), _output_leaves(reference)
    if opaque_a or opaque_b or len(leaves_a) != len(leaves_b):
        return float("nan"), "the folded model's output has another structure than the original's"
    worst, tensor_index = 0.0, -1
    for x, y in zip(leaves_a, leaves_b):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            if type(x) is not type(y) or not x == y:
                return worst, f"a value in the folded model's output changed ({y!r:.60} -> {x!r:.60})"
            continue
        tensor_index += 1
        where = f"output tensor {tensor_index} (shape {tuple(y.shape)}, {y.dtype})"
        if x.shape != y.shape or x.dtype != y.dtype:
            return worst, f"{where} came back with shape {tuple(x.shape)}, {x.dtype}"
        if not y.is_floating_point():
            if not torch.equal(x, y):
                return worst, f"{where} changed"
            continue
        xd, yd = x.detach().double(), y.detach().double()
        if not all(torch.equal(test(xd), test(yd)) for test in (torch.isnan, torch.isposinf, torch.isneginf)):
            return worst, f"{where} has non-finite values at other places"
        finite = torch.isfinite(yd)
        if not bool(finite.any()):
            continue
        diff = (xd[finite] - yd[finite]).abs().max().item()
        scale = yd[finite].abs().max().item()
        rtol = max(_precision_eps(y), weight_eps) ** 0.5
        worst = max(worst, diff)
        if not diff <= rtol * scale:
            return worst, (f"{where} differed from the original by {diff:.3g}, more than its tolerance "
                           f"{rtol * scale:.3g} ({rtol:.2g} of its largest magnitude {scale:.3g})")
    return worst, None


# ---------------------------------------------------------------- public entry point

def fold(model: nn.Module, example_input: Any = None, *,
         return_report: bool = False) -> nn.Module | tuple[nn.Module, FoldReport]:
    """Fold eval-mode channel norms into the ``Conv1d/2d/3d`` or ``Linear`` that feeds them.

    A folded norm becomes ``nn.Identity`` and the layer gets new weight and bias parameters
    (computed in float64, stored in the layer's dtype and memory format). Folding never changes what
    the model computes: a pair is folded only when all of these hold, and every other norm is left
    as it is, with the reason in the report:

    * the norm is an eval-mode ``ChannelNorm``/``SyncChannelNorm``/``nn.BatchNorm*d``/``nn.SyncBatchNorm``
      with running statistics, or a ``FrozenChannelNorm`` (not a fused norm + activation block);
    * the layer is a ``Conv1d/2d/3d`` or ``Linear`` with as many output features as the norm has
      channels;
    * both compute what their class computes: a subclass is accepted only when it overrides nothing
      the class's ``forward`` uses (a subclass with its own ``forward`` is left), and neither module
      has hooks, a parametrized tensor or a ``forward`` replaced on the instance;
    * the norm's channel axis is the layer's output-feature axis: the last axis after ``Linear``,
      axis 1 (batched) or 0 (unbatched) after a convolution. Without ``example_input`` the rank is
      unknown, so it must hold for every rank both modules accept: ``channel_axis=-1`` after
      ``Linear``, and ``nn.BatchNorm2d/3d`` or ``channel_axis=-(k+1)`` after ``Conv{k}d``; ``channel_axis=1``
      (or ``nn.BatchNorm1d``) needs ``example_input`` to show the input is batched / 2-D;
    * the layer's output feeds nothing but the norm, and neither module runs twice; the layer's
      weight and bias are registered in no other module (tied weights); with ``example_input``, no
      operation outside the layer's own call reads them, and the model does not keep the layer's
      output either (on a module, in a list, in an object of its output: still alive once the
      forward has returned).

    With ``example_input`` the model's forward must not turn tensor values into Python values
    (``bool(t)``, ``t.item()``, ...) outside its norms: such a forward may take another path, with
    other data edges, on another input, and nothing is folded (the reason says so). Following the
    example run rather than a ``torch.fx`` trace works for every model fx cannot trace, and the
    run records every operation that reads a layer's output or weight, which is what a graph would
    show. The model is run once on it (without autograd; buffers and the random state are restored)
    to find which layer's output enters which norm, including norms called from a custom
    ``forward``; afterwards the folded model is run again and every tensor reachable from its output
    (through tuples, named tuples, lists, dicts, dataclasses and objects' attributes; an output
    holding anything else, such as a module or an object without ``__dict__``, folds nothing) must
    match the original's within its own tolerance, ``sqrt(eps)`` times that tensor's largest
    magnitude, ``eps`` being the coarser of the tensor's and the folded layers' precision (float32
    on CUDA counts as TF32, which cuDNN convolutions may use): 1.5e-8 in float64, 3.5e-4 in
    float32, 0.031 in float16 and TF32, 0.088 in bfloat16. Otherwise every fold is undone. A norm
    registered under several names that runs once on the example becomes one ``nn.Identity`` under
    all of them.

    Without ``example_input`` only consecutive pairs in plain ``nn.Sequential`` containers reached
    from the model through plain ``nn.Sequential`` containers are folded (``nn.Sequential``'s own
    forward is the only one known without running it); a pair below any custom ``forward`` (a
    torchvision ResNet's blocks, the model's own) is left with the reason "called from a custom
    forward". Modules registered under several names are left too. Code outside every forward
    (a hook on another module, a method the caller runs) is assumed not to read the layers' weights.

    Args:
        model: the model, changed in place (norms inside are replaced in their parents).
        example_input: optional input to follow the real graph: a tensor, or a tuple of positional
            arguments for ``model``. A small batch is enough (every layer's output is held during
            the run). Default: None.
        return_report: keyword-only; also return a `FoldReport` of what was folded and what was
            left, and why. Without it, a ``UserWarning`` names the eval-mode norms with running
            statistics that were left (the ones a caller would expect folded). Default: False.

    Returns:
        ``model``, or ``(model, FoldReport)`` when ``return_report`` is true. A model that is itself a
        norm has nothing before it and comes back unchanged. A model left in training mode whose
        ``ChannelNorm``/``SyncChannelNorm``/``nn.BatchNorm*d`` layers are in training mode too is a
        ``ValueError`` naming one (call ``model.eval()`` first), and so is a lazy norm not yet run.
    """
    refuse_uninitialized_norms(model, "fold")
    refuse_training_norms(model, "fold")
    if example_input is None:
        report = FoldReport("sequential")
        edges, why_not = _sequential_edges(model)
        reference = None
    else:
        report = FoldReport("traced")
        with _no_side_effects(model, example_input):
            edges, why_not, reference = _traced_edges(model, example_input)
        opaque = _output_leaves(reference)[1]
        if opaque is not None:
            # The verification could not compare what the output holds there: fold nothing.
            for name in edges:
                why_not[name] = (f"the model's output holds {opaque}, which the final check cannot compare, so "
                                 f"no fold can be verified")
            edges = {}

    if isinstance(model, _NORM_LIKE + _FUSED_BLOCKS):
        report.left.append(LeftNorm("", "the model itself is a norm: no layer before it to fold into"))
    # Without an example, a module or tensor registered twice may be used at its other place too; with
    # one, the run counted the calls of each module and saw every read of the layers' weights.
    shared = _shared(model) if example_input is None else set()
    owners = _tensor_owners(model)
    registered = _registrations(model)
    undo: list[_Undo] = []
    for norm_name in _norm_names(model):
        norm = model.get_submodule(norm_name)
        if norm_name not in edges:
            reason = why_not.get(norm_name) or (
                "called from a custom forward; its producer is unknown without example_input"
                if example_input is None else "its producer was not found")
            report.left.append(LeftNorm(norm_name, reason))
            continue
        layer_name, rank = edges[norm_name]
        layer = model.get_submodule(layer_name)
        problem = _pair_problem(layer, norm, rank) or _tied_problem(layer, owners)
        if problem is None and (id(layer) in shared or id(norm) in shared):
            problem = ("the layer or the norm is registered under several names (shared): without example_input "
                       "fold cannot tell whether it also runs at its other place")
        if problem is not None:
            report.left.append(LeftNorm(norm_name, problem))
            continue
        names = registered[id(norm)]  # every name of the norm now names the same Identity
        undo.append(_Undo(layer, layer.weight, layer.bias, names, norm))
        _fold_into(layer, norm)
        identity = nn.Identity()
        for parent, attr in names:
            setattr(parent, attr, identity)
        report.folded.append(FoldedPair(layer_name, norm_name))

    if reference is not None and undo:
        weight_eps = max(_precision_eps(step.layer.weight) for step in undo)
        with _no_side_effects(model, example_input):
            try:
                diff, failure = _compare_outputs(_call(model, example_input), reference, weight_eps)
            except Exception as error:  # a forward that relied on the norm module itself
                diff, failure = None, f"the folded model failed on example_input ({type(error).__name__}: {error})"
        report.max_abs_diff = diff
        if failure is not None:
            for step in reversed(undo):
                step()
            report.left = [LeftNorm(p.norm, f"{failure}; every fold was undone") for p in report.folded] + report.left
            report.folded = []
            report.max_abs_diff = None
    if not return_report:
        _warn_if_foldable_left(model, report)
    return (model, report) if return_report else model


def _warn_if_foldable_left(model: nn.Module, report: FoldReport) -> None:
    """One warning when eval-mode norms with running statistics stayed (the ones a caller expects folded,
    also those of a subclass fold does not trust)."""
    expected = [n for n in report.left if _looks_foldable(model.get_submodule(n.norm))]
    if expected:
        first = expected[0]
        warnings.warn(f"fold left {len(expected)} eval-mode norm(s) with running statistics unfolded "
                      f"(first: {first.norm}: {first.reason}); fold(..., return_report=True) lists every one "
                      f"and why", UserWarning, stacklevel=3)
