"""Engine fixtures: the serving tests' tiny random Llama (SmolLM2's tokenizer), served by ``agentrl serve``."""

from tests.serving.conftest import tiny_dir  # noqa: F401 - the fixture, shared
