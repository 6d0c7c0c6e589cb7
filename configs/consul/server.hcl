# A Consul server of the cluster podedge runs on. Run three (or five), each
# on a machine of its own; they elect a Raft leader among themselves and hold
# podedge's data (pods, tenants, the leader lock, service health). Change
# node_name and bind_addr on each; everything else is the same on all.
#
#   consul agent -config-file=server.hcl
#
# podedge's programs never talk to a server: they talk to the client agent on
# their own host (configs/consul/client.hcl). Add gossip encryption, TLS and
# ACLs before production; podedge's consul.token takes the ACL token.

datacenter = "dc1"
node_name  = "consul-1"
data_dir   = "/var/lib/consul"

server           = true
bootstrap_expect = 3

# This server's own address, and where the others are.
bind_addr   = "10.0.0.11"
client_addr = "127.0.0.1"
retry_join  = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
# Try a failed join again soon, not after the default 30s.
retry_interval = "5s"

# Raft's timeouts scale with this. Consul's default, 5, lets a dead leader go
# unreplaced for 5-10s and more; 1 is what HashiCorp recommends for
# production servers and brings elections down to 1-3s. Writes to podedge
# (sign-ups, moves) wait for a Raft leader; reads and traffic do not.
performance {
  raft_multiplier = 1
}

# podedge's dnsd answers the platform's DNS; Consul's own DNS is not needed.
ports {
  dns = -1
}

ui_config {
  enabled = true
}

disable_update_check = true
