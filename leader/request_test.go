package leader

import (
	"strings"
	"testing"
)

func testValidator() *validator {
	return newValidator("Example.Test.", DefaultReservedNames(), 3)
}

func TestSignupValidation(t *testing.T) {
	v := testValidator()
	cases := []struct {
		name string
		body string
		want string // "" for valid
		// for valid bodies, the normalised domains
		domains []string
	}{
		{name: "minimal", body: `{"name":"acme","lat":53.3,"lon":-6.2}`},
		{name: "equator and prime meridian are positions, not omissions", body: `{"name":"acme","lat":0,"lon":0}`},
		{name: "bounds are inclusive", body: `{"name":"acme","lat":-90,"lon":180}`},
		{name: "domains normalised and deduplicated", body: `{"name":"acme","lat":1,"lon":1,"domains":["Acme.COM.","acme.com","www.acme.com"]}`, domains: []string{"acme.com", "www.acme.com"}},
		{name: "missing name", body: `{"lat":1,"lon":1}`, want: "name is empty"},
		{name: "upper case name", body: `{"name":"Acme","lat":1,"lon":1}`, want: `may hold only a-z`},
		{name: "name with a dot", body: `{"name":"a.b","lat":1,"lon":1}`, want: `may hold only a-z`},
		{name: "leading hyphen", body: `{"name":"-acme","lat":1,"lon":1}`, want: "starts or ends with '-'"},
		{name: "name too long", body: `{"name":"` + strings.Repeat("a", 64) + `","lat":1,"lon":1}`, want: "longer than 63"},
		{name: "reserved pods", body: `{"name":"pods","lat":1,"lon":1}`, want: `"pods" is reserved`},
		{name: "reserved www", body: `{"name":"www","lat":1,"lon":1}`, want: `"www" is reserved`},
		{name: "reserved ns1", body: `{"name":"ns1","lat":1,"lon":1}`, want: `"ns1" is reserved`},
		{name: "missing lat", body: `{"name":"acme","lon":1}`, want: "lat is required"},
		{name: "missing lon", body: `{"name":"acme","lat":1}`, want: "lon is required"},
		{name: "null lat", body: `{"name":"acme","lat":null,"lon":1}`, want: "lat is required"},
		{name: "lat out of range", body: `{"name":"acme","lat":90.5,"lon":1}`, want: "lat 90.5 is outside [-90, 90]"},
		{name: "lon out of range", body: `{"name":"acme","lat":1,"lon":-181}`, want: "lon -181 is outside [-180, 180]"},
		{name: "lat as a string", body: `{"name":"acme","lat":"53","lon":1}`, want: `field "lat": string is not a float64`},
		{name: "unknown field", body: `{"name":"acme","lat":1,"lon":1,"pod":"dublin"}`, want: `unknown field "pod"`},
		{name: "malformed JSON", body: `{"name":"acme",`, want: "malformed JSON"},
		{name: "not an object", body: `[1,2]`, want: "body must be a JSON object, not array"},
		{name: "empty body", body: ``, want: "body is empty"},
		{name: "two objects", body: `{"name":"acme","lat":1,"lon":1} {}`, want: "data after the object"},
		{name: "invalid domain", body: `{"name":"acme","lat":1,"lon":1,"domains":["exa mple.com"]}`, want: `invalid label "exa mple"`},
		{name: "single-label domain", body: `{"name":"acme","lat":1,"lon":1,"domains":["localhost"]}`, want: "at least two labels"},
		{name: "domain inside the zone", body: `{"name":"acme","lat":1,"lon":1,"domains":["other.example.test"]}`, want: "inside the platform's zone"},
		{name: "the zone itself", body: `{"name":"acme","lat":1,"lon":1,"domains":["EXAMPLE.test."]}`, want: "inside the platform's zone"},
		{name: "pods name inside the zone", body: `{"name":"acme","lat":1,"lon":1,"domains":["dublin.pods.example.test"]}`, want: "inside the platform's zone"},
		{name: "too many domains", body: `{"name":"acme","lat":1,"lon":1,"domains":["a.com","b.com","c.com","d.com"]}`, want: "4 domains exceed the limit of 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var req signupRequest
			err := decodeJSON([]byte(c.body), &req)
			var su Signup
			if err == nil {
				su, err = v.signup(req, false)
			}
			if c.want == "" {
				if err != nil {
					t.Fatalf("valid body refused: %v", err)
				}
				if c.domains != nil && strings.Join(su.Domains, ",") != strings.Join(c.domains, ",") {
					t.Fatalf("domains %v, want %v", su.Domains, c.domains)
				}
				return
			}
			if err == nil {
				t.Fatalf("invalid body accepted: %+v", su)
			}
			if e := asError(err); e.Kind != KindInvalid || !strings.Contains(e.Msg, c.want) {
				t.Fatalf("got %v (kind %d), want a 400 mentioning %q", e.Msg, e.Kind, c.want)
			}
		})
	}
}

func TestPodValidation(t *testing.T) {
	v := testValidator()
	cases := []struct {
		name, pod, body, want string
	}{
		{name: "valid", pod: "dublin", body: `{"region":"eu-west","lat":53.3,"lon":-6.2,"capacity":100}`},
		{name: "capacity 0 drains a pod", pod: "dublin", body: `{"lat":53.3,"lon":-6.2,"capacity":0}`},
		{name: "name in the body may repeat the path", pod: "dublin", body: `{"name":"dublin","lat":1,"lon":1,"capacity":1}`},
		{name: "name in the body must match", pod: "dublin", body: `{"name":"london","lat":1,"lon":1,"capacity":1}`, want: `body names pod "london"`},
		{name: "invalid pod name", pod: "Dub_lin", body: `{"lat":1,"lon":1,"capacity":1}`, want: "may hold only a-z"},
		{name: "missing capacity", pod: "dublin", body: `{"lat":1,"lon":1}`, want: "capacity is required"},
		{name: "negative capacity", pod: "dublin", body: `{"lat":1,"lon":1,"capacity":-1}`, want: "capacity -1 is outside"},
		{name: "huge capacity", pod: "dublin", body: `{"lat":1,"lon":1,"capacity":1000001}`, want: "capacity 1000001 is outside"},
		{name: "fractional capacity", pod: "dublin", body: `{"lat":1,"lon":1,"capacity":1.5}`, want: `field "capacity"`},
		{name: "missing lat", pod: "dublin", body: `{"lon":1,"capacity":1}`, want: "lat is required"},
		{name: "lon out of range", pod: "dublin", body: `{"lat":1,"lon":200,"capacity":1}`, want: "lon 200 is outside"},
		{name: "unknown field", pod: "dublin", body: `{"lat":1,"lon":1,"capacity":1,"tenants":3}`, want: `unknown field "tenants"`},
		{name: "cordoned", pod: "dublin", body: `{"lat":1,"lon":1,"capacity":1,"accepting":false}`},
		{name: "accepting", pod: "dublin", body: `{"lat":1,"lon":1,"capacity":1,"accepting":true}`},
		{name: "accepting is a boolean", pod: "dublin", body: `{"lat":1,"lon":1,"capacity":1,"accepting":"no"}`, want: `field "accepting": string is not a bool`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var req podRequest
			err := decodeJSON([]byte(c.body), &req)
			if err == nil {
				_, err = v.pod(c.pod, req)
			}
			if c.want == "" {
				if err != nil {
					t.Fatalf("valid pod refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || asError(err).Kind != KindInvalid {
				t.Fatalf("got %v, want a 400 mentioning %q", err, c.want)
			}
		})
	}
}
