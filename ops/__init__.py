"""Operator tools: the embedded dev stack (`gpgpu up`), admin commands on a node's stores
and Temporal, the process supervisor. Server-side; the SDK (client/) never imports it."""
