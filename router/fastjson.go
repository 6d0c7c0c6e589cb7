package router

import "bytes"

// fastTenant parses a tenant's value as json.Unmarshal into a zero Tenant
// would, for the shape the leader writes: an object of name, pod, domains
// (strings) and created, plain ASCII strings without escapes. It reports
// false for anything else (escapes, nulls, limits, other or repeated
// fields, bad syntax), which the caller then hands to encoding/json: the
// result is the same either way, this one only costs a tenth (a full read
// of 1,000,000 tenants decodes each of them). A name equal to key is key
// itself, not a copy.
func fastTenant(raw []byte, key string, t *Tenant) bool {
	p := fastParser{b: raw}
	if !p.byte('{') {
		return false
	}
	var seen uint8
	if p.space(); p.peek() == '}' {
		p.i++
		return p.end()
	}
	for {
		field, ok := p.str()
		if !ok || !p.byte(':') {
			return false
		}
		var bit uint8
		switch {
		case asciiFold(field, "name"):
			bit = 1
			v, ok := p.str()
			if !ok {
				return false
			}
			if t.Name = key; string(v) != key {
				t.Name = string(v)
			}
		case asciiFold(field, "pod"):
			bit = 2
			v, ok := p.str()
			if !ok {
				return false
			}
			t.Pod = string(v)
		case asciiFold(field, "domains"):
			bit = 4
			if t.Domains, ok = p.strings(); !ok {
				return false
			}
		case asciiFold(field, "created"):
			bit = 8
			p.space()
			start := p.i
			if _, ok := p.str(); !ok || t.Created.UnmarshalJSON(raw[start:p.i]) != nil {
				return false
			}
		default:
			return false // limits, or a field encoding/json would skip
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		p.space()
		switch p.peek() {
		case ',':
			p.i++
		case '}':
			p.i++
			return p.end()
		default:
			return false
		}
	}
}

type fastParser struct {
	b []byte
	i int
}

func (p *fastParser) space() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\t' || p.b[p.i] == '\n' || p.b[p.i] == '\r') {
		p.i++
	}
}

func (p *fastParser) peek() byte {
	if p.i < len(p.b) {
		return p.b[p.i]
	}
	return 0
}

// byte consumes c after white space.
func (p *fastParser) byte(c byte) bool {
	p.space()
	if p.peek() != c {
		return false
	}
	p.i++
	return true
}

// str reads a string of printable ASCII without escapes.
func (p *fastParser) str() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	end := bytes.IndexByte(p.b[p.i:], '"')
	if end < 0 {
		return nil, false
	}
	v := p.b[p.i : p.i+end]
	for _, c := range v {
		if c < 0x20 || c >= 0x80 || c == '\\' {
			return nil, false
		}
	}
	p.i += end + 1
	return v, true
}

// strings reads an array of strings; [] is an empty slice, not nil, as
// encoding/json makes it.
func (p *fastParser) strings() ([]string, bool) {
	if !p.byte('[') {
		return nil, false
	}
	out := []string{}
	if p.space(); p.peek() == ']' {
		p.i++
		return out, true
	}
	for {
		v, ok := p.str()
		if !ok {
			return nil, false
		}
		out = append(out, string(v))
		p.space()
		switch p.peek() {
		case ',':
			p.i++
		case ']':
			p.i++
			return out, true
		default:
			return nil, false
		}
	}
}

// end reports whether only white space is left.
func (p *fastParser) end() bool {
	p.space()
	return p.i == len(p.b)
}

// asciiFold reports whether field is name regardless of ASCII case, as
// encoding/json matches field names (field is ASCII: str checked it).
func asciiFold(field []byte, name string) bool {
	if len(field) != len(name) {
		return false
	}
	for i := range field {
		c := field[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}
