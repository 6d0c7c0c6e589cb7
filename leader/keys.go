package leader

import "github.com/podedge/podedge/internal/changelog"

// keys names the Consul KV keys the leader reads and writes. The pods/ and
// tenants/ folders are the platform's public contract; everything under
// leader/ is internal to the leader.
type keys struct {
	prefix string // "podedge/", with the trailing slash
}

// podsDir holds one JSON value per pod.
func (k keys) podsDir() string        { return k.prefix + "pods/" }
func (k keys) pod(name string) string { return k.podsDir() + name }

// tenantsDir holds one JSON value per tenant.
func (k keys) tenantsDir() string        { return k.prefix + "tenants/" }
func (k keys) tenant(name string) string { return k.tenantsDir() + name }

// lock is held by the active leader's session; its value is the leader's
// advertised API address, which standbys forward writes to.
func (k keys) lock() string { return k.prefix + "leader/lock" }

// written is set by a write whose transaction would otherwise change no
// key (one that only deletes): Consul reports a transaction's index only in
// the ModifyIndex of the keys it set, and every write answers with its index.
func (k keys) written() string { return k.prefix + "leader/written" }

// seatsDir holds, per pod, the number of tenants placed in it, as a decimal
// integer. Every write that adds a tenant to a pod or takes one out updates
// it with check-and-set in the same transaction, which is what keeps a pod
// within its capacity under concurrency.
func (k keys) seatsDir() string        { return k.prefix + "leader/seats/" }
func (k keys) seats(pod string) string { return k.seatsDir() + pod }

// domainsDir indexes custom domains: the value of domains/<domain> is the
// tenant that owns it. A write that gives a domain to a tenant creates the
// key with check-and-set at index 0 (only if absent), so no domain is ever
// given twice.
func (k keys) domainsDir() string          { return k.prefix + "leader/domains/" }
func (k keys) domain(domain string) string { return k.domainsDir() + domain }

// logHead is the change log's head (internal/changelog); the ring slots
// are under log/ring/.
func (k keys) logHead() string { return changelog.HeadKey(k.prefix) }
