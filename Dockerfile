# The Weighbridge controller image. The compose stack (docker-compose.yml) also runs the demo
# services and the demo traffic from it.
FROM python:3.11-slim

# HAProxy: the controller checks every candidate configuration with `haproxy -c` before a
# reload, and without --attach it runs HAProxy itself (`weighbridge run`).
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*

# the state directory must be private to the controller (mode 0700): a named volume mounted
# here starts with these permissions
RUN mkdir -m 0700 /var/lib/weighbridge

WORKDIR /opt/weighbridge
COPY pyproject.toml README.md ./
COPY controller ./controller
RUN pip install --no-cache-dir . && weighbridge --help >/dev/null

# API (and GET /metrics), HAProxy's exporter (--stats) when HAProxy runs in this container.
# An API on 0.0.0.0 needs a write token: run with -e WEIGHBRIDGE_API_TOKEN=… or mount a file
# and add --token-file (docs/security.md); add --api-hostname for the names clients use.
# Mount your gateways at /etc/weighbridge/weighbridge.yaml: a --config file that is missing
# stops the start (it never starts, and stores, an empty state by mistake).
EXPOSE 9900 8404
CMD ["weighbridge", "run", "--config", "/etc/weighbridge/weighbridge.yaml", \
     "--state-dir", "/var/lib/weighbridge", "--api", "0.0.0.0:9900", "--stats", "0.0.0.0:8404"]
