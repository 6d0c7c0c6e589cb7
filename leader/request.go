package leader

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"

	"github.com/podedge/podedge/router"
)

// maxCapacity bounds a pod's capacity, so that usage compares as exact
// integer fractions without overflow.
const maxCapacity = 1_000_000

// podRequest is the body of PUT /v1/pods/{pod}. Pointers tell a missing
// field from a zero one: latitude 0 is the equator, not an omission.
type podRequest struct {
	Name     *string  `json:"name"`
	Region   string   `json:"region"`
	Lat      *float64 `json:"lat"`
	Lon      *float64 `json:"lon"`
	Capacity *int     `json:"capacity"`
	// Accepting false cordons the pod; absent means true.
	Accepting *bool `json:"accepting"`
}

// signupRequest is the body of POST /v1/tenants and POST /v1/placements.
// The location is either lat and lon or ip.
type signupRequest struct {
	Name    string   `json:"name"`
	Lat     *float64 `json:"lat"`
	Lon     *float64 `json:"lon"`
	IP      *string  `json:"ip"`
	Domains []string `json:"domains"`
}

// moveRequest is the body of POST /v1/tenants/{name}/move.
type moveRequest struct {
	Pod string `json:"pod"`
}

// Signup is a validated sign-up.
type Signup struct {
	Name     string
	Lat, Lon float64
	// Source is where Lat and Lon come from, as Location.Source; empty
	// means "request".
	Source string
	// Domains are normalised, distinct custom domains.
	Domains []string
}

// Location is where the sign-up is placed from.
func (su Signup) Location() Location {
	src := su.Source
	if src == "" {
		src = "request"
	}
	return Location{Lat: su.Lat, Lon: su.Lon, Source: src}
}

// decodeJSON decodes a JSON body into dst strictly: unknown fields and
// trailing data are errors that name the problem. The Content-Type is not
// checked: the body must be JSON whatever it says (curl -d says
// application/x-www-form-urlencoded).
func decodeJSON(body []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return invalid("malformed JSON: data after the object")
	}
	return nil
}

// jsonError turns a decoding error into a client error naming the problem.
func jsonError(err error) error {
	if syn, ok := errors.AsType[*json.SyntaxError](err); ok {
		return invalid("malformed JSON at byte %d: %v", syn.Offset, syn)
	}
	if ty, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if ty.Field == "" {
			return invalid("body must be a JSON object, not %s", ty.Value)
		}
		return invalid("field %q: %s is not a %s", ty.Field, ty.Value, ty.Type)
	}
	if errors.Is(err, io.EOF) {
		return invalid("body is empty; a JSON object is required")
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return invalid("malformed JSON: unexpected end of body")
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return invalid("unknown field %s", f)
	}
	return invalid("malformed JSON: %v", err)
}

// checkCoordinates validates a position where both fields are required.
func checkCoordinates(lat, lon *float64) error {
	switch {
	case lat == nil:
		return invalid("lat is required")
	case lon == nil:
		return invalid("lon is required")
	}
	if err := router.CheckCoordinates(*lat, *lon); err != nil {
		return invalid("%v", err)
	}
	return nil
}

// validator checks names and domains against the platform's zone and
// reserved names.
type validator struct {
	zone       string // "example.test", no trailing dot
	reserved   map[string]bool
	maxDomains int
}

func newValidator(zone string, reserved []string, maxDomains int) *validator {
	v := &validator{
		zone:       strings.TrimSuffix(strings.ToLower(zone), "."),
		reserved:   make(map[string]bool, len(reserved)),
		maxDomains: maxDomains,
	}
	for _, n := range reserved {
		v.reserved[n] = true
	}
	return v
}

// tenantName validates a tenant name: a DNS label that is not reserved.
func (v *validator) tenantName(name string) error {
	if err := v.tenantLabel(name); err != nil {
		return err
	}
	if v.reserved[name] {
		return invalid("tenant name %q is reserved", name)
	}
	return nil
}

// tenantLabel validates the name of an existing tenant: reserved names are
// refused only at sign-up.
func (v *validator) tenantLabel(name string) error {
	if err := router.CheckLabel(name); err != nil {
		return invalid("tenant %v", err)
	}
	return nil
}

// podName validates a pod name: a DNS label.
func podName(name string) error {
	if err := router.CheckLabel(name); err != nil {
		return invalid("pod %v", err)
	}
	return nil
}

// domain normalises a custom domain (lower case, no trailing dot) and
// refuses invalid ones and those inside the platform's own zone, which the
// platform names itself.
func (v *validator) domain(d string) (string, error) {
	n, err := router.NormalizeDomain(d)
	if err != nil {
		return "", invalid("%v", err)
	}
	if n == v.zone || strings.HasSuffix(n, "."+v.zone) {
		return "", invalid("domain %q is inside the platform's zone %q", n, v.zone)
	}
	return n, nil
}

// domains normalises a list of custom domains, dropping repeats.
func (v *validator) domains(ds []string) ([]string, error) {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		n, err := v.domain(d)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) > v.maxDomains {
		return nil, invalid("%d domains exceed the limit of %d per tenant", len(out), v.maxDomains)
	}
	return out, nil
}

// signup validates a sign-up request. A sign-up given by its IP address
// comes back with Source "ip" and no coordinates yet: the caller locates
// it. A dry run (POST /v1/placements) may leave the name out.
func (v *validator) signup(req signupRequest, dryRun bool) (Signup, error) {
	if req.Name != "" || !dryRun {
		if err := v.tenantName(req.Name); err != nil {
			return Signup{}, err
		}
	}
	su := Signup{Name: req.Name, Source: "request"}
	switch {
	case req.IP != nil && (req.Lat != nil || req.Lon != nil):
		return Signup{}, invalid("give either ip or lat and lon, not both")
	case req.IP == nil && req.Lat == nil && req.Lon == nil:
		return Signup{}, invalid("a location is required: ip, or lat and lon")
	case req.IP != nil:
		su.Source = "ip"
	default:
		if err := checkCoordinates(req.Lat, req.Lon); err != nil {
			return Signup{}, err
		}
		su.Lat, su.Lon = *req.Lat, *req.Lon
	}
	ds, err := v.domains(req.Domains)
	if err != nil {
		return Signup{}, err
	}
	su.Domains = ds
	return su, nil
}

// pod validates a pod registration for the pod named in the path.
func (v *validator) pod(name string, req podRequest) (router.Pod, error) {
	if err := podName(name); err != nil {
		return router.Pod{}, err
	}
	if req.Name != nil && *req.Name != name {
		return router.Pod{}, invalid("body names pod %q but the path names %q", *req.Name, name)
	}
	if err := checkCoordinates(req.Lat, req.Lon); err != nil {
		return router.Pod{}, err
	}
	switch {
	case req.Capacity == nil:
		return router.Pod{}, invalid("capacity is required")
	case *req.Capacity < 0 || *req.Capacity > maxCapacity:
		return router.Pod{}, invalid("capacity %d is outside [0, %d]", *req.Capacity, maxCapacity)
	case len(req.Region) > 64:
		return router.Pod{}, invalid("region is longer than 64 characters")
	}
	p := router.Pod{Name: name, Region: req.Region, Lat: *req.Lat, Lon: *req.Lon, Capacity: *req.Capacity}
	if req.Accepting != nil && !*req.Accepting {
		// Stored only when false: the stored form of an accepting pod
		// stays what it was before the field existed.
		p.Accepting = req.Accepting
	}
	return p, nil
}
