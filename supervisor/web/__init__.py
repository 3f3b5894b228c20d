"""The web console: a node's processes, their live state, logs and diagrams in a browser.

A daemon serves it when its configuration sets ``[daemon] web`` (see the manual's page on the
web console); a program that runs a :class:`~supervisor.Node` of its own may serve one too::

    console = WebConsole(node, "127.0.0.1", 8080, read="open")
    await console.start()
    ...
    await console.close()

Kinds add panels of their own to their processes' pages (:class:`Panel`, :class:`PanelView`).
A daemon that is a cluster member passes a :class:`ClusterSource`, and the console serves the
cluster's page (``/cluster``).
"""

from ._cluster import ClusterSource
from ._console import ReadAccess, WebConsole, WebStatistics
from ._panels import Panel, PanelView

__all__ = ["ClusterSource", "Panel", "PanelView", "ReadAccess", "WebConsole", "WebStatistics"]
