"""One adapter per attention family; adding a family means adding one file and one line here.

Module adapters are tried in order and the first that matches a module claims it; function adapters
see the calls made outside claimed modules.
"""

from .biggan import BigGanAdapter
from .diffusers import DiffusersAdapter
from .mha import MultiheadAdapter
from .qkv import QkvAdapter
from .sagan import SaganAdapter
from .sdpa import SdpaAdapter
from .softmax import SoftmaxAdapter

MODULE_ADAPTERS = (DiffusersAdapter, SaganAdapter, BigGanAdapter, QkvAdapter, MultiheadAdapter)
FUNCTION_ADAPTERS = (SdpaAdapter, SoftmaxAdapter)

__all__ = ["FUNCTION_ADAPTERS", "MODULE_ADAPTERS"]
