"""Run the service on uvicorn: one worker, uvloop + httptools, no access log (the prediction log and
/metrics record what matters). On SIGTERM or Ctrl-C uvicorn stops accepting, lets every in-flight
request finish (up to `graceful_timeout`), then runs the app's shutdown, which drains and fsyncs the
prediction log."""

from __future__ import annotations

import logging
import sys

from mlgraph.serving.settings import ServeSettings


def serve(settings: ServeSettings) -> int:
    import uvicorn

    from mlgraph.serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The log writer and the thread pool share the GIL with the event loop; at the default 5 ms switch
    # interval a formatting burst could hold a request that long (the p99 budget is 10 ms).
    sys.setswitchinterval(0.0005)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        server_header=False,  # no "server: uvicorn": what runs the service is nobody's business
        lifespan="on",
        timeout_graceful_shutdown=int(settings.graceful_timeout),
    )
    uvicorn.Server(config).run()
    return 0
