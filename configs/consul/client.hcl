# The Consul client agent on every podedge host: edges, dnsd, leader replicas
# and app servers all talk to the agent on their own machine (their
# consul.address, 127.0.0.1:8500), never to a server. Change node_name and
# bind_addr on each host.
#
#   consul agent -config-file=client.hcl
#
# The edge and the leader register themselves through this agent's API and
# register again on their own if it restarts without its data dir. Services
# defined in a file, as the app server below, come back with the agent.

datacenter = "dc1"
node_name  = "pod-1-host-1"
data_dir   = "/var/lib/consul"

bind_addr   = "10.0.1.21"
client_addr = "127.0.0.1"
# The servers of configs/consul/server.hcl.
retry_join     = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
retry_interval = "5s"

ports {
  dns = -1
}

# An app server of pod pod-1 on this host: the edges route to it while every
# check passes (the agent's serfHealth included).
services = [
  {
    id      = "app-pod-1-host-1"
    name    = "app"
    address = "10.0.1.21"
    port    = 9000
    meta = {
      pod = "pod-1"
    }
    checks = [
      {
        id       = "app-pod-1-host-1-http"
        http     = "http://10.0.1.21:9000/healthz"
        interval = "2s"
        timeout  = "1s"
      }
    ]
  }
]

disable_update_check = true
