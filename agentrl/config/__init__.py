"""The configurations of ``agentrl train`` and ``agentrl rollout``: typed, validated records, from
YAML and command-line flags.

Flag names are slime's wherever slime has the concept (``--rollout-batch-size``,
``--n-samples-per-prompt``, ``--eps-clip`` ...), so slime scripts carry over. A YAML file given
with ``--config`` holds the same names (dashes or underscores); flags on the command line win
over the file, which wins over the defaults. One YAML file serves both commands: each reads the
keys it knows and leaves the other's (``agentrl rollout`` ignores ``lr``). Unknown names, values
out of range and invalid combinations are refused when the config is read, with one line that
names the flag (and suggests the closest one).

Ranges are declared on the fields (``opt(..., range=Range(gt=0, le=1))``) and checked by one
loop, with the choices and the finiteness of every float.

Each component gets only its own part: :meth:`EpisodeConfig.rollout`, :meth:`TrainConfig.trainer`
and :meth:`TrainConfig.loss` build the typed configs of the runner, the trainer and the loss.
"""

from agentrl.config.fields import Range, opt
from agentrl.config.parsing import build_parser, json_object, load_config, load_rollout_config
from agentrl.config.records import EpisodeConfig, RolloutCommandConfig, TrainConfig

__all__ = ["EpisodeConfig", "Range", "RolloutCommandConfig", "TrainConfig", "build_parser", "json_object", "load_config", "load_rollout_config", "opt"]
