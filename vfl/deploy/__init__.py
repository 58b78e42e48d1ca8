"""Deployment across machines on Flower (extra ``flower``).

The coordinator runs in a Flower ServerApp (:mod:`vfl.deploy.serverapp`), each party in a
long-lived party host (:mod:`vfl.deploy.host`) next to its own SuperNode, reached through a
forwarding ClientApp (:mod:`vfl.deploy.clientapp`). The transport
(:mod:`vfl.deploy.transport`) implements :class:`vfl.core.transport.Transport`, so the same
party and coordinator classes run unchanged; party-to-party payloads are sealed end to end
(:mod:`vfl.deploy.envelope`). :mod:`vfl.deploy.local` starts a whole federation on one
machine (tests, demos, the benchmark); :mod:`vfl.deploy.node` is one organization's node.

Nothing here is imported by ``import vfl``; importing Flower happens only in the ServerApp,
the ClientApp and the launcher.
"""
