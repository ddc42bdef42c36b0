"""Compatibility with slime: its plug-in surface (:mod:`agentrl.compat.slime`), the ``args`` its
plug-ins read (:mod:`~agentrl.compat.slime_args`), its flags (:mod:`~agentrl.compat.slime_flags`)
and episodes played by its generate functions (:mod:`~agentrl.compat.slime_generate`).

Importing this package makes ``import slime.utils.types`` and the other modules slime plug-ins
import resolve to agentrl's where slime itself is not installed (:mod:`~agentrl.compat.slime_imports`).
"""

from agentrl.compat.slime_imports import install

install()
