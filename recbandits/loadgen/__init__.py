"""recbandits.loadgen: tooling around the service, not the service: what load tests, benchmarks and tests use.

| module | what |
|---|---|
| ``loadtest`` / ``cli`` | ``recbandits loadtest``: simulated MovieLens users against a running service, over HTTP |
| ``http_client`` | the load generators' keep-alive HTTP/1.1 client (httptools' parser) |
| ``service_process`` | a service as a subprocess with its own local Ray, its ready line, and killing all of it |
"""
