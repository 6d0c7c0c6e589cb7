# Consul dev agent of the local platform (`make run`): one in-memory server
# with the web UI. localpod passes the addresses and ports on the command
# line (HTTP 127.0.0.1:8500, server 8300, serf 8301/8302) so that the
# end-to-end test can move them. A real deployment runs a Consul agent on
# every machine, joined to a cluster of three or five servers.
node_name            = "local"
log_level            = "warn"
disable_update_check = true

ui_config {
  enabled = true
}

ports {
  # podedge speaks to Consul over HTTP only; its own dnsd serves DNS.
  dns      = -1
  grpc     = -1
  grpc_tls = -1
}

# localpod stops the agent with SIGTERM, at once: a dev agent keeps nothing,
# and leaving its one-server cluster gracefully would take 11 s.
