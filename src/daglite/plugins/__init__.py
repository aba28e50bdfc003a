"""The plugin system: hooks (``daglite.plugins.hooks``), registration
(``daglite.plugins.manager``) and the event channel (``daglite.plugins.reporters``).
"""
