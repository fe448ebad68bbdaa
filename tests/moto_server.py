"""A real S3-protocol server for tests: moto on an ephemeral loopback port, with fake credentials.

`serialized=True` runs werkzeug single-threaded: moto's own conditional writes check and then put
without a lock, so under a threaded server two racing `If-None-Match: *` PUTs can both succeed
(real S3 never lets them); handled one request at a time they behave like S3.
"""

from __future__ import annotations

import logging
import urllib.request

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class SerialMotoServer(ThreadedMotoServer):
    """moto's ThreadedMotoServer whose werkzeug server handles one request at a time."""

    def _server_entry(self) -> None:  # moto's own, with threaded=False
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(self._ip_address, self._port, app, False, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


class MotoS3:
    """Start moto at http://127.0.0.1:<port>; `env` is what a client process needs to reach it."""

    def __init__(self, serialized: bool = True):
        cls = SerialMotoServer if serialized else ThreadedMotoServer
        self.server = cls(ip_address="127.0.0.1", port=0, verbose=False)

    def start(self) -> "MotoS3":
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.env = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint}  # botocore reads it: no evsys setting needed
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")).read()  # moto's state is process-wide
        return self

    def stop(self) -> None:
        self.server.stop()

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
