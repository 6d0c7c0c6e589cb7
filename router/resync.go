package router

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/changelog"
)

// resync reads the head and both folders in one transaction, with q, and
// publishes them whole. found is false when there is no usable head.
//
// It decodes each entry as it is read (KVStreamer): with 1,000,000 tenants
// the answer is 300 MB of JSON, and holding it, its entries and a slice of
// every tenant at once is what made a reader's peak memory.
func (f *follower) resync(ctx context.Context, q *api.QueryOptions) (found bool, err error) {
	var (
		head      *changelog.Head
		headIndex uint64
		index     uint64
		pods      = map[string]Pod{}
		tenants   tenantSlab
		errs      []error
		raw       []byte
	)
	headKey, podsDir, tenantsDir := []byte(f.keys.head), []byte(f.keys.pods), []byte(f.keys.tenants)
	meta, err := ReadEach(f.txn, []string{f.keys.head}, []string{f.keys.pods, f.keys.tenants}, q.WithContext(ctx), func(e *KVEntry) error {
		value, err := e.ValueIn(&raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %q: value is not base64: %w", e.Key, err))
			return nil
		}
		index = max(index, e.ModifyIndex)
		switch {
		case bytes.Equal(e.Key, headKey):
			if e.ModifyIndex == 0 {
				return nil
			}
			h, err := changelog.DecodeHead(value)
			if err != nil {
				f.r.log.Error("change log head does not parse; reading the folders instead", "error", err.Error())
				head = nil
				return nil
			}
			head, headIndex = h, e.ModifyIndex
		case bytes.HasPrefix(e.Key, podsDir):
			if p, err := f.decodePod(string(e.Key[len(podsDir):]), value); err != nil {
				errs = append(errs, fmt.Errorf("key %q: %w", e.Key, err))
			} else {
				pods[p.Name] = p
			}
		case bytes.HasPrefix(e.Key, tenantsDir):
			if t, err := f.decodeTenant(string(e.Key[len(tenantsDir):]), value); err != nil {
				errs = append(errs, fmt.Errorf("key %q: %w", e.Key, err))
			} else {
				tenants.add(t)
			}
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	index = max(index, meta.LastIndex)
	f.w.logSkipped(errs)
	idx, problems := indexTenants(f.r.builder.seed, f.r.snap.Load().zoneSuffix, tenants.all, f.idx)
	f.logProblems(problems)
	f.pods, f.idx = pods, idx
	f.epoch, f.seq, f.chain, f.headIndex = "", 0, "", 0
	f.recent = [recentChains]seqChain{}
	if head != nil {
		f.epoch, f.seq, f.chain, f.headIndex = head.Epoch, head.Seq, head.Chain(), headIndex
		f.remember(head.Seq, head.Chain())
		for _, e := range head.Entries {
			f.remember(e.Seq, e.Chain)
		}
		index = headIndex
	}
	f.stats.seq.Store(f.seq)
	f.w.setKV(f.podList(), idx, nil, true, index)
	return head != nil, nil
}

// tenantSlab allocates tenants in blocks: reading 1,000,000 of them then
// neither grows one slice of them (copying it, holding two for a while)
// nor allocates each alone.
type tenantSlab struct {
	block []Tenant
	all   []*Tenant
}

const slabBlock = 1024

func (s *tenantSlab) add(t Tenant) {
	if len(s.block) == cap(s.block) {
		s.block = make([]Tenant, 0, slabBlock)
	}
	s.block = append(s.block, t)
	s.all = append(s.all, &s.block[len(s.block)-1])
}

// decodePod and decodeTenant decode a value as the folders hold it, with
// the pod names interned: 100,000 tenants share a handful of them.
func (f *follower) decodePod(name string, raw []byte) (Pod, error) {
	if name == "" || strings.Contains(name, "/") {
		return Pod{}, fmt.Errorf("not a pod name")
	}
	return decodePod(name, raw)
}

func (f *follower) decodeTenant(name string, raw []byte) (Tenant, error) {
	if name == "" || strings.Contains(name, "/") {
		return Tenant{}, fmt.Errorf("not a tenant name")
	}
	t, err := decodeTenant(name, raw)
	if err != nil {
		return Tenant{}, err
	}
	if p, ok := f.names[t.Pod]; ok {
		t.Pod = p
	} else {
		f.names[t.Pod] = t.Pod
	}
	return t, nil
}
