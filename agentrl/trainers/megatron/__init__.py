"""The Megatron-Core training backend (``--train-backend megatron``; needs ``agentrl[megatron]``).

Modules, one idea each:

* :mod:`.config` - :class:`MegatronConfig`, Megatron's parallelism flags (no Megatron import);
* :mod:`.mcore` - the Megatron-Core API the backend uses, pinned and checked by a test;
* :mod:`.cpu_mode` - running Megatron-Core without CUDA (tests, CPU runs);
* :mod:`.model` - a ``GPTModel`` from a Hugging Face config;
* :mod:`.attention` - packed core attention without Transformer Engine;
* :mod:`.convert` - Hugging Face <-> Megatron parameter tables;
* :mod:`.weights` - loading, streaming export and writing of Hugging Face weights;
* :mod:`.forward`, :mod:`.logprobs` - a packed micro-batch through the model, vocab-parallel log-probs;
* :mod:`.snapshot` - the reference weights in host memory;
* :mod:`.checkpoint` - ``dist_checkpointing`` checkpoints and ``agentrl convert``;
* :mod:`.trainer` - :class:`~agentrl.trainers.megatron.trainer.MegatronTrainer`.

Importing this package imports nothing heavy; import the modules themselves.
"""

from agentrl.trainers.megatron.config import MegatronConfig

__all__ = ["MegatronConfig"]
