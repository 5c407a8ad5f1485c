# yw_ext, AGPL-3.0 license
"""The package's logger, without importing Ultralytics.

``logging.getLogger("ultralytics")`` is the very object ``ultralytics.utils.LOGGER`` is (loggers are singletons by
name), so once Ultralytics is imported, messages from torch-free modules go through its handlers and format; in a
torch-free deployment they go through Python's default handling.

Examples:
    >>> from yw_ext.core.log import LOGGER
    >>> LOGGER.name
    'ultralytics'
"""

import logging

LOGGER = logging.getLogger("ultralytics")

__all__ = ["LOGGER"]
