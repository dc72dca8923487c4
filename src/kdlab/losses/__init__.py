"""Pure distillation losses: stateless functions, tensors first, hyperparameters as keywords.

Like torch.nn.functional, these hold no state; the modules in `kdlab.methods` own taps, connectors and
weights and call them. Each function returns the loss as defined by its paper or authors' code
(docs/methods.md has a section per method with the formula and its sources); outer weights are applied by the
method.
"""

from kdlab.losses.contrastive import *  # noqa: F401,F403
from kdlab.losses.features import *  # noqa: F401,F403
from kdlab.losses.logits import *  # noqa: F401,F403
from kdlab.losses.relations import *  # noqa: F401,F403
from kdlab.losses.selfsupervised import *  # noqa: F401,F403
from kdlab.losses.transformers import *  # noqa: F401,F403
