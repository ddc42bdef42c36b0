"""An aiohttp application served on ``host:port`` for the life of an ``async with`` block: the
lifecycle every agentrl server shares (:class:`~agentrl.serving.sglang_api.SGLangServer`,
:class:`~agentrl.serving.openai_api.OpenAIServer`)."""

from __future__ import annotations

from typing import Self

from aiohttp import web


class AppServer:
    """Serves :meth:`application` on ``host:port``.

    ``port=0`` takes a free port; after :meth:`start`, :attr:`port` and :attr:`url` tell which.
    Binds to localhost by default. On :meth:`stop`, requests still being answered get
    ``SHUTDOWN_TIMEOUT_S`` seconds before they are cancelled.
    """

    SHUTDOWN_TIMEOUT_S = 5.0

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def application(self) -> web.Application:
        """The application to serve; made once per :meth:`start`."""
        raise NotImplementedError

    async def start(self) -> None:
        """Listen on ``host:port``.

        Raises:
            OSError: the address cannot be bound (in use, unknown host); nothing is left open.
        """
        self._runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=self.SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError:
            await self.stop()
            raise
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
