package dnsd

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/consultest"
)

const (
	testKeyName   = "xfr.example.test."
	testKeySecret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtMzItYnl0ZXM="
)

// xfrServer is a dnsd that lets 127.0.0.1 transfer with the test key.
func xfrServer(t *testing.T, mutate func(*Config)) *testServer {
	t.Helper()
	return startServer(t, nil, func(c *Config) {
		c.Transfer.Allow = []string{"127.0.0.1"}
		c.Transfer.TSIG = TSIGKey{Name: testKeyName, Algorithm: "hmac-sha256", Secret: testKeySecret}
		if mutate != nil {
			mutate(c)
		}
	})
}

// transfer asks for the zone by AXFR (serial 0) or IXFR from serial over
// TCP from local, signed with key/secret unless key is "", and returns
// every record received, or the error.
func transfer(t testing.TB, addr, local string, qtype uint16, serial uint32, key, secret string) ([]dns.RR, error) {
	t.Helper()
	m := new(dns.Msg)
	if qtype == dns.TypeIXFR {
		m.SetIxfr("example.test.", serial, "ns1.example.test.", "hostmaster.example.test.")
	} else {
		m.SetAxfr("example.test.")
	}
	tr := &dns.Transfer{DialTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second}
	if local != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		tr.Conn = &dns.Conn{Conn: c}
	}
	if key != "" {
		m.SetTsig(key, dns.HmacSHA256, 300, time.Now().Unix())
		tr.TsigSecret = map[string]string{key: secret}
	}
	env, err := tr.In(m, addr)
	if err != nil {
		return nil, err
	}
	var rrs []dns.RR
	for e := range env {
		if e.Error != nil {
			return rrs, e.Error
		}
		rrs = append(rrs, e.RR...)
	}
	return rrs, nil
}

// zoneSet is a transferred zone as a set of records in text form, SOA
// excluded.
func zoneSet(rrs []dns.RR) map[string]bool {
	set := map[string]bool{}
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeSOA {
			set[rr.String()] = true
		}
	}
	return set
}

// applyIXFR applies an IXFR answer to the zone old and returns the new
// zone, or fails when the answer is not incremental.
func applyIXFR(t *testing.T, old map[string]bool, rrs []dns.RR) map[string]bool {
	t.Helper()
	if len(rrs) < 2 || rrs[0].Header().Rrtype != dns.TypeSOA {
		t.Fatalf("IXFR answer does not start with the SOA: %v", rrs)
	}
	if rrs[1].Header().Rrtype != dns.TypeSOA {
		t.Fatalf("IXFR answered in full (AXFR style)")
	}
	cur := map[string]bool{}
	for k := range old {
		cur[k] = true
	}
	final := rrs[0].(*dns.SOA).Serial
	deleting := false
	for _, rr := range rrs[1 : len(rrs)-1] {
		if rr.Header().Rrtype == dns.TypeSOA {
			deleting = !deleting
			continue
		}
		if deleting {
			if !cur[rr.String()] {
				t.Fatalf("IXFR deletes %s, which the zone does not hold", rr)
			}
			delete(cur, rr.String())
		} else {
			cur[rr.String()] = true
		}
	}
	if last := rrs[len(rrs)-1].(*dns.SOA); last.Serial != final {
		t.Fatalf("IXFR ends with serial %d, began with %d", last.Serial, final)
	}
	return cur
}

// TestTransfers checks AXFR and IXFR against dnsd: the whole zone as
// served (at most 13 of a pod's passing edges, the MX set, the tenants'
// CNAMEs, NS and glue); IXFR from each of 30 earlier versions, applied to
// that version's AXFR, gives the current AXFR; and refusals: no TSIG, a
// bad key or signature, another address, UDP.
func TestTransfers(t *testing.T) {
	ts := xfrServer(t, nil)
	st := benchState()
	st.Tenants = append(st.Tenants, benchState().Tenants[0])
	st.Tenants[1].Name = "globex"
	ts.Router().Publish(st)
	rrs, err := transfer(t, ts.addr, "", dns.TypeAXFR, 0, testKeyName, testKeySecret)
	if err != nil {
		t.Fatal(err)
	}
	if rrs[0].Header().Rrtype != dns.TypeSOA || rrs[len(rrs)-1].Header().Rrtype != dns.TypeSOA {
		t.Fatalf("AXFR not between SOAs: %v", rrs)
	}
	want := []string{
		"example.test.\t3600\tIN\tNS\tns1.example.test.",
		"example.test.\t3600\tIN\tNS\tns2.example.test.",
		"example.test.\t3600\tIN\tNS\tns.provider.example.net.",
		"ns1.example.test.\t3600\tIN\tA\t192.0.2.53",
		"ns1.example.test.\t3600\tIN\tAAAA\t2001:db8::53",
		"ns2.example.test.\t3600\tIN\tA\t198.51.100.53",
		"acme.example.test.\t300\tIN\tCNAME\tpod-1.pods.example.test.",
		"globex.example.test.\t300\tIN\tCNAME\tpod-1.pods.example.test.",
		"pod-1.pods.example.test.\t3600\tIN\tMX\t10 mx1.mail.example.net.",
		"pod-1.pods.example.test.\t3600\tIN\tMX\t20 mx2.mail.example.net.",
	}
	for i := 1; i <= 13; i++ { // 13 of the 15 passing edges, as answered
		want = append(want, fmt.Sprintf("pod-1.pods.example.test.\t30\tIN\tA\t192.0.2.%d", i))
	}
	slices.Sort(want)
	if got := slices.Sorted(maps.Keys(zoneSet(rrs))); !slices.Equal(got, want) {
		t.Errorf("AXFR holds\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	t.Run("refusals", func(t *testing.T) {
		cases := []struct {
			name, local, key, secret string
			qtype                    uint16
			want                     string
		}{
			{"unsigned", "", "", "", dns.TypeAXFR, "REFUSED"},
			{"unsigned IXFR", "", "", "", dns.TypeIXFR, "REFUSED"},
			{"a wrong secret", "", testKeyName, "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==", dns.TypeAXFR, "NOTAUTH"},
			{"an unknown key", "", "other.example.test.", testKeySecret, dns.TypeAXFR, "NOTAUTH"},
			{"another address", "127.0.0.5", testKeyName, testKeySecret, dns.TypeAXFR, "REFUSED"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				rrs, err := transfer(t, ts.addr, c.local, c.qtype, 1, c.key, c.secret)
				if err == nil || !strings.Contains(err.Error(), c.want) && !strings.Contains(err.Error(), "bad") {
					t.Errorf("transfer: %d records, error %v; want %s", len(rrs), err, c.want)
				}
			})
		}
		m := new(dns.Msg)
		m.SetAxfr("example.test.")
		m.SetTsig(testKeyName, dns.HmacSHA256, 300, time.Now().Unix())
		c := &dns.Client{Net: "udp", TsigSecret: map[string]string{testKeyName: testKeySecret}, Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, ts.addr)
		if err != nil || r.Rcode != dns.RcodeRefused {
			t.Errorf("AXFR over UDP: %v %v, want REFUSED", r, err)
		}
	})

	t.Run("a signed SOA query gets a signed answer", func(t *testing.T) {
		for _, network := range []string{"udp", "tcp"} {
			m := new(dns.Msg)
			m.SetQuestion("example.test.", dns.TypeSOA)
			m.SetTsig(testKeyName, dns.HmacSHA256, 300, time.Now().Unix())
			c := &dns.Client{Net: network, TsigSecret: map[string]string{testKeyName: testKeySecret}, Timeout: 5 * time.Second}
			r, _, err := c.Exchange(m, ts.addr) // fails unless the answer's TSIG verifies
			if err != nil || r.IsTsig() == nil || len(r.Answer) != 1 || r.Answer[0].(*dns.SOA).Serial != ts.Handler().Serial() {
				t.Errorf("%s: %v %v", network, r, err)
			}
		}
	})

	// Versions: random changes, each one's AXFR kept.
	p := newRandomPlatform(7, 60)
	type version struct {
		serial uint32
		zone   map[string]bool
	}
	var versions []version
	for i := 0; i < 30; i++ {
		p.step()
		ts.Router().Publish(p.state())
		rrs, err := transfer(t, ts.addr, "", dns.TypeAXFR, 0, testKeyName, testKeySecret)
		if err != nil {
			t.Fatal(err)
		}
		serial := rrs[0].(*dns.SOA).Serial
		if len(versions) == 0 || versions[len(versions)-1].serial != serial {
			versions = append(versions, version{serial, zoneSet(rrs)})
		}
	}
	cur := versions[len(versions)-1]
	incremental := 0
	for i, v := range versions[:len(versions)-1] {
		rrs, err := transfer(t, ts.addr, "", dns.TypeIXFR, v.serial, testKeyName, testKeySecret)
		if err != nil {
			t.Fatalf("IXFR from %d: %v", v.serial, err)
		}
		got := zoneSet(rrs)
		if len(rrs) > 1 && rrs[1].Header().Rrtype == dns.TypeSOA {
			got = applyIXFR(t, v.zone, rrs)
			incremental++
		} else if i >= len(versions)-4 {
			// The journal drops the oldest steps once they hold more
			// changes than the zone has names; never the last three.
			t.Errorf("IXFR from %d, %d versions back, answered in full", v.serial, len(versions)-1-i)
		}
		if fmt.Sprint(slices.Sorted(maps.Keys(got))) != fmt.Sprint(slices.Sorted(maps.Keys(cur.zone))) {
			t.Fatalf("IXFR from %d to %d, applied, differs from the AXFR of %d", v.serial, cur.serial, cur.serial)
		}
	}
	t.Logf("%d versions, %d answered incrementally", len(versions), incremental)
	if rrs, err := transfer(t, ts.addr, "", dns.TypeIXFR, cur.serial, testKeyName, testKeySecret); err != nil || len(rrs) != 1 {
		t.Errorf("IXFR from the current serial: %d records, %v; want the SOA alone", len(rrs), err)
	}
	if rrs, err := transfer(t, ts.addr, "", dns.TypeIXFR, 3, testKeyName, testKeySecret); err != nil || len(rrs) < 3 || rrs[1].Header().Rrtype == dns.TypeSOA {
		t.Errorf("IXFR from a serial the journal does not hold: %d records, %v; want the whole zone", len(rrs), err)
	}
	// Counted once the last message is written: the client may be done
	// a moment before.
	consultest.WaitFor(t, 5*time.Second, "the incremental transfers to be counted", func() bool {
		return ts.metric(t, `dnsd_transfers_total{kind="ixfr",result="ok"}`) == float64(incremental)
	})
}
