"""Input layouts the family must accept, expressed against torch's channels-first tensors.

Each layout turns an (N, C, *spatial) tensor into what our module sees and gives the channel axis
to use plus the inverse map, so results can be compared with torch modules on the original tensor.
"""
import torch

LAYOUTS = ("contiguous", "channels_last", "axis_last", "axis_last_view", "axis_middle")


def applicable(layout: str, rank: int) -> bool:
    if layout == "channels_last":
        return rank in (4, 5)
    if layout == "axis_middle":
        return rank >= 4
    return True


def to_layout(x: torch.Tensor, layout: str):
    """Return (ours_input, channel_axis, back) with back(ours_output) in torch's (N, C, ...) layout."""
    rank = x.ndim
    if layout == "contiguous":
        return x, 1, lambda y: y
    if layout == "channels_last":
        fmt = torch.channels_last if rank == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt), 1, lambda y: y
    if layout == "axis_last":
        return x.movedim(1, -1).contiguous(), -1, lambda y: y.movedim(-1, 1)
    if layout == "axis_last_view":
        return x.movedim(1, -1), rank - 1, lambda y: y.movedim(-1, 1)
    if layout == "axis_middle":
        return x.movedim(1, 2).contiguous(), 2, lambda y: y.movedim(2, 1)
    raise ValueError(layout)


def memory_format_of(x: torch.Tensor):
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format if x.is_contiguous() else None
