package leader

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"

	"github.com/podedge/podedge/router"
)

// Paging of GET /v1/tenants.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
	// maxPageScan bounds the tenants one page looks at, whatever the
	// filter: a pod that holds a few of 100,000 tenants is then found in
	// pages that may come back short, even empty, with a next_cursor.
	maxPageScan = 10_000
)

// tenantPage is the answer of GET /v1/tenants.
type tenantPage struct {
	Tenants []tenantJSON `json:"tenants"`
	// NextCursor continues the listing; empty on the last page.
	NextCursor string `json:"next_cursor"`
}

// listing is a validated GET /v1/tenants.
type listing struct {
	pod, prefix string
	after       string // the cursor: the last name the previous page looked at
	limit       int
}

// listingParams are the query parameters of GET /v1/tenants.
var listingParams = []string{"pod", "prefix", "limit", "cursor"}

// parseListing validates the listing's parameters.
func parseListing(r *http.Request) (listing, error) {
	q := r.URL.Query()
	l := listing{pod: q.Get("pod"), prefix: q.Get("prefix"), limit: defaultPageSize}
	if l.pod != "" {
		if err := router.CheckLabel(l.pod); err != nil {
			return l, invalid("pod: %v", err)
		}
	}
	if len(l.prefix) > 63 || strings.Trim(l.prefix, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return l, invalid("prefix: %q is not the start of a tenant name (at most 63 of a-z, 0-9 and '-')", l.prefix)
	}
	if v := q.Get("limit"); v != "" || q.Has("limit") {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			return l, invalid("limit: %q is not a whole number from 1 to %d", v, maxPageSize)
		}
		l.limit = n
	}
	if v := q.Get("cursor"); v != "" || q.Has("cursor") {
		raw, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil || !router.ValidLabel(string(raw)) {
			return l, invalid("cursor: %q is not a next_cursor this API gave", v)
		}
		l.after = string(raw)
	}
	return l, nil
}

func (s *Server) listTenants(w http.ResponseWriter, r *http.Request) {
	l, err := parseListing(r)
	if err != nil {
		writeError(w, err)
		return
	}
	v, _ := s.readView(w, r, listingParams...)
	if v == nil {
		return
	}
	writeJSON(w, http.StatusOK, s.page(v, l))
}

// page walks the view's tenants in order of name from the cursor (or the
// prefix), taking those that match, until the page is full or it has
// looked at maxPageScan tenants.
func (s *Server) page(v *router.Snapshot, l listing) tenantPage {
	out := tenantPage{Tenants: make([]tenantJSON, 0, min(l.limit, 64))}
	scanned, last, more := 0, "", false
	visit := func(t *router.Tenant) bool {
		if !strings.HasPrefix(t.Name, l.prefix) {
			return false // names sort: the prefix's range is over
		}
		if l.pod == "" || t.Pod == l.pod {
			if len(out.Tenants) == l.limit {
				more = true
				return false
			}
			out.Tenants = append(out.Tenants, s.tenantJSON(*t))
		}
		last = t.Name
		if scanned++; scanned == maxPageScan {
			more = true
			return false
		}
		return true
	}
	switch {
	case l.after >= l.prefix:
		v.AscendTenants(l.after, visit)
	case v.Tenant(l.prefix) == nil || visit(v.Tenant(l.prefix)):
		// The prefix may itself be a name, which AscendTenants skips.
		v.AscendTenants(l.prefix, visit)
	}
	if more {
		out.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(last))
	}
	return out
}
