"""Pure distillation losses: stateless functions, tensors first, hyperparameters as keywords.

Like torch.nn.functional, these hold no state; the modules in `kdlab.methods` own taps, connectors and
weights and call them. Each function returns the loss as defined by its paper or authors' code
(see ../shared/METHODS.md); outer weights are applied by the method.
"""

from .contrastive import *  # noqa: F401,F403
from .features import *  # noqa: F401,F403
from .logits import *  # noqa: F401,F403
from .relations import *  # noqa: F401,F403
