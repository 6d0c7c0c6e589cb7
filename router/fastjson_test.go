package router

import (
	"encoding/json"
	"reflect"
	"testing"
)

// fastTenant accepts only what encoding/json reads, and reads it the same.
func sameAsJSON(t *testing.T, raw string) bool {
	t.Helper()
	var fast Tenant
	if !fastTenant([]byte(raw), "acme", &fast) {
		return false
	}
	var want Tenant
	if err := json.Unmarshal([]byte(raw), &want); err != nil {
		t.Fatalf("fastTenant read what encoding/json refuses (%v): %s", err, raw)
	}
	if !reflect.DeepEqual(fast, want) {
		t.Fatalf("fastTenant read %+v, encoding/json %+v: %s", fast, want, raw)
	}
	return true
}

func TestFastTenantReadsAsEncodingJSON(t *testing.T) {
	for _, c := range []struct {
		raw  string
		fast bool
	}{
		{`{"name":"acme","pod":"pod-1","domains":["www.acme.com","acme.org"],"created":"2026-11-26T16:05:00.123456789Z"}`, true},
		{`{"name":"acme","pod":"pod-1","domains":[],"created":"2026-11-26T16:05:00+02:00"}`, true},
		{` { "Name" : "acme" , "POD":"pod-1" } `, true},
		{`{}`, true},
		{`{"pod":"pod-1","domains":null}`, false},
		{`{"name":"a\u0063me","pod":"pod-1"}`, false},
		{`{"name":"acme","pod":"pod-1","limits":{"rps":5}}`, false},
		{`{"name":"acme","name":"other"}`, false},
		{`{"name":"acme","extra":1}`, false},
		{`{"name":"é"}`, false},
		{`{"created":"yesterday"}`, false},
		{`{"name":"acme"} x`, false},
		{`{"name":"acme",}`, false},
		{`{"domains":["a",]}`, false},
		{`{"name":"acme"`, false},
	} {
		if got := sameAsJSON(t, c.raw); got != c.fast {
			t.Errorf("%s: fast %v, want %v", c.raw, got, c.fast)
		}
	}
}

func FuzzFastTenant(f *testing.F) {
	f.Add(`{"name":"acme","pod":"pod-1","domains":["www.acme.com"],"created":"2026-11-26T16:05:00.123456789Z"}`)
	f.Add(`{"Name":"a","domains":[]}`)
	f.Fuzz(func(t *testing.T, raw string) { sameAsJSON(t, raw) })
}
