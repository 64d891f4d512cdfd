"""The web page for the people who install and run the gateway (`ui.listen`).

Live reads with their pictures (Server-Sent Events), cameras, known plates,
the read history and health; server-rendered HTML with a little plain
JavaScript, all served by the gateway itself. Imported only when `ui.listen`
is set.
"""

from gateway.ui.server import WebUi

__all__ = ["WebUi"]
