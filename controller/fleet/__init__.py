"""A fleet of nodes sharing one desired state in etcd (docs/fleet.md).

`etcd` is our adapter over aetcd (endpoints, keepalive, retries, pages, watches, leases);
`store` the gateways in etcd behind the same `Store` as the file store; `follow` the loop
that lists, watches and converges this node (and its local copy); `nodes` the node keys and
`?wait=applied`; `rollouts` the election of the one node that runs rollouts; `api` the HTTP
side; `run` the wiring `controller.service` calls.
"""
