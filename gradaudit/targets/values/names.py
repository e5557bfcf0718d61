"""Row names for tensors given to `gradaudit.check` as a list: the caller's own names.

`check(loss, [logits, h, W1], [dlogits, dh, dW1])` reports rows `logits`, `h` and `W1`, found
by identity among the calling frame's local then global variables (what makemore's `cmp`
is given by hand); a tensor no name or several rows' names point to keeps `tensors[i]`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from types import FrameType


def list_names(values: object, frame: FrameType | None) -> list[str] | None:
    """Each value's variable name in `frame` (None unless `values` is a list or tuple)."""
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes, Mapping)):
        return None
    scopes = [frame.f_locals, frame.f_globals] if frame is not None else []
    found = []
    for i, value in enumerate(values):
        names = (k for scope in scopes for k, v in scope.items() if v is value)
        found.append(next((k for k in names if not k.startswith("_")), f"tensors[{i}]"))
    counts = Counter(found)
    return [name if counts[name] == 1 else f"tensors[{i}]" for i, name in enumerate(found)]
