"""What the axes of one attention call are, read against what the running block states.

A call arrives as ``(B', h', N, N')`` scores (or ``q``/``k`` of that shape) and nothing in the shape
says which leading axis holds heads and which holds windows, nor whether the softmax runs over
tokens at all. The blocks that make the call say it: a ``num_heads`` on the attention module, the
token count of the map the model last stated. The capture applies these rules to each call before
it becomes a layer:

* :func:`check_token_axes`: a product that contracts over the tokens and leaves channels on both
  axes (XCiT's cross-covariance attention, ``softmax(q^T k)`` of ``d x d``) is channel attention, not
  a map over the image: declined, and said in ``cap.problems``.
* :func:`token_order_problem`: tokens the model shuffled or unrolled (MAE, Hiera) are not row-major,
  and are declined rather than drawn at the wrong cells.
* :func:`check_heads`: a head axis that holds a multiple of the heads the block states has windows
  folded into it (VitDet, Twins, NesT, Hiera mask units). Averaging it would mix rows of different
  windows, so unless a window partition placed them (:mod:`.windows`), the call is declined.
* :func:`per_sequence`: a batch axis that holds several sequences per image (windows or unfolded
  patches a block cuts without stating how: MobileViT) is drawn per sequence, and the layout says
  so where the user looks, never as if each were the whole image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from torch import nn

from .adapters.base import Declined, Extracted
from .grid import TokenLayout

#: Attributes that attention modules keep their head count in (timm, transformers, diffusers).
_HEAD_ATTRIBUTES = ("num_heads", "num_attention_heads", "heads", "n_heads")


def check_token_axes(ex: Extracted, token_counts: Iterable[int]) -> None:
    """Decline ``ex`` when its product contracted over the tokens: the contracted length is the
    token count of a map the model just stated (``token_counts``), and longer than both axes of the
    softmax, which then hold channels (XCiT: ``(B, h, d, N) @ (B, h, N, d)``). A head dimension equal
    to a score axis is ordinary attention whatever the counts, and is kept."""
    _, _, n, m = ex.shape
    contracted = ex.summed
    if contracted is not None and contracted > max(n, m) and contracted in set(token_counts):
        raise Declined(
            f"channel attention: the softmax runs over {n} x {m} channels after a product over the "
            f"{contracted} tokens of the map (cross-covariance, as in XCiT); there is no map over tokens"
        )


def token_order_problem(module: nn.Module) -> str | None:
    """Why tokens made inside ``module`` are not the grid in row-major order, or None: MAE's
    ``random_masking`` keeps a random subset of the patches, shuffled, and Hiera unrolls its map
    (``unroll_schedule``) so that mask units are contiguous. Placing such tokens row-major would draw
    each row at the wrong cells; the order lives in per-image indices the forward makes and returns,
    not in anything the capture reads here. A property of the module, not of one call: the capture
    asks once per module when it makes its hooks."""
    if isinstance(vars(module).get("unroll_schedule"), list | tuple):
        return (
            "its tokens are in Hiera's unrolled order (`unroll_schedule`), not row-major: "
            "placing them on the grid would put each row at the wrong cells"
        )
    if any(callable(getattr(type(c), "random_masking", None)) for c in (module, *module.children())):
        return (
            "its tokens are a random subset of the patches in shuffled order (MAE's `random_masking`, "
            "`ids_restore`): placing them row-major would put each row at the wrong cells, and the "
            "per-image indices are not read"
        )
    return None


def stated_heads(modules: Iterable[nn.Module]) -> int | None:
    """The head count of the innermost running module that states one as a plain int."""
    for module in modules:
        attrs = vars(module)
        for name in _HEAD_ATTRIBUTES:
            value = attrs.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_heads(ex: Extracted, heads: int | None) -> None:
    """Decline a call whose head axis holds ``k > 1`` times the block's ``heads``: windows or mask
    units folded into the head axis that no window partition placed."""
    got = ex.shape[1]
    if heads is not None and got != heads and got % heads == 0 and ex.summed is None:
        raise Declined(  # Deformable DETR's softmax over sampling points, (B, Q, heads, points)
            f"a softmax not made by a product of queries and keys, whose leading axes hold {got} = "
            f"{got // heads} x {heads} heads: no map over tokens the running block states"
        )
    if heads is not None and got != heads and got % heads == 0:
        raise Declined(
            f"its head axis holds {got} = {got // heads} x {heads} heads: windows (or mask units) folded "
            "into the head axis, in a partition the running block does not state; averaging them as "
            "heads would mix different windows"
        )


def per_sequence(layout: TokenLayout, ex: Extracted, batch: int | None) -> TokenLayout:
    """``layout`` marked as one of several sequences per image when the call's batch axis is a
    multiple ``k > 1`` of the number of images the model was given (MobileViT's unfolded patches:
    image x offset). ``batch`` is None when the model's input is no batch of images (a video, whose
    frames fold into the batch as whole images, or tokens)."""
    got = ex.shape[0]
    if not batch or got == batch or got % batch:
        return layout
    note = (
        f"{got // batch} sequences per image on the batch axis (windows or unfolded patches the block "
        "does not state): each entry is one of them, drawn on its own grid, not the whole image"
    )
    return replace(layout, note=f"{layout.note}; {note}" if layout.note else note, ambiguous=True)
