"""The plugin system: hooks, registration and the event channel.

Hooks are in ``daglite.plugins.hooks``, registration in
``daglite.plugins.manager`` and the event channel in ``daglite.plugins.reporters``.
"""
