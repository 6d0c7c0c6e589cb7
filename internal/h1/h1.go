// Package h1 finds the bounds of HTTP/1.1 messages (RFC 9112) in byte
// buffers, for event loops that read into buffers of their own rather than
// through a bufio.Reader on a blocking connection: where a head ends, how to
// parse it with fasthttp's header types without allocating, and where a
// chunked body ends.
package h1

import (
	"bufio"
	"bytes"
	"errors"
)

// A FramingError is a head refused for how its lines are framed, before any
// parser sees it: a proxy that ended a head, or a line, where the parser
// behind it (or the server behind that) does not would let one message pass
// for two (request smuggling). Status is what a server answers it with.
type FramingError struct {
	Status int
	What   string
}

func (e *FramingError) Error() string { return e.What }

// The framing errors. RFC 9112 allows a recipient to take a bare LF as a
// line's end and to replace a bare CR or an obs-fold with spaces; podedge
// refuses them all, since it cannot know that every hop behind it would
// read them the same way.
var (
	ErrHeadTooLarge = &FramingError{431, "head larger than the limit"}
	ErrBareLF       = &FramingError{400, "a line of the head ends in LF without CR"}
	ErrBareCR       = &FramingError{400, "the head holds a CR that ends no line"}
	ErrObsFold      = &FramingError{400, "a header line begins with whitespace (obsolete line folding)"}
	ErrFieldName    = &FramingError{400, "a header line has no name of token characters followed at once by a colon"}
	ErrCoding       = &FramingError{501, "a transfer coding other than chunked"}
)

// HeadScanner finds where a message head ends, checking the framing of each
// line as it goes (CheckLine). It resumes where its last call stopped, so
// that a head arriving a byte at a time is read once, not once per byte; the
// zero value is at the start of a head.
type HeadScanner struct {
	next  int // offset of the first line not yet checked
	lines int // lines checked so far
	// first is the length of the start line, once it is whole;
	// firstTold that StartLine has returned it.
	first     int
	firstTold bool
	// coding: a Transfer-Encoding other than chunked was seen.
	coding bool
}

// StartLine returns the start line at the start of b, without its CRLF,
// the first time it is called once Scan has seen the line whole, and nil
// otherwise: a reader may check the line before the rest of the head
// arrives, once.
func (s *HeadScanner) StartLine(b []byte) []byte {
	if s.lines == 0 || s.firstTold || s.first > len(b) {
		return nil
	}
	s.firstTold = true
	return b[:s.first]
}

// Reset starts over at the start of a head.
func (s *HeadScanner) Reset() { *s = HeadScanner{} }

// Scan returns the complete head at the start of b, through its blank line,
// or nil while it is incomplete. A head that is or will be longer than max
// bytes fails with ErrHeadTooLarge, a line framed wrongly with its
// FramingError. A Transfer-Encoding other than chunked does not stop the
// scan: the whole head comes back with ErrCoding, so that a caller can
// refuse a head that does not parse first, with 400, as a parser reading
// the head whole does. b must hold the bytes of earlier calls since the last Reset
// at the same offsets (more may follow them). request selects the checks of
// a request head.
func (s *HeadScanner) Scan(b []byte, max int, request bool) ([]byte, error) {
	if s.next > len(b) {
		*s = HeadScanner{}
	}
	for i := s.next; ; {
		lf := bytes.IndexByte(b[i:], '\n')
		if lf < 0 {
			if len(b) > max {
				return nil, ErrHeadTooLarge
			}
			return nil, nil
		}
		end := i + lf + 1
		if end > max {
			return nil, ErrHeadTooLarge
		}
		if lf == 0 || b[i+lf-1] != '\r' {
			return nil, ErrBareLF
		}
		line := b[i : i+lf-1]
		if len(line) == 0 {
			if i == 0 {
				return nil, ErrBareLF // a head cannot start blank (SkipEmptyLines)
			}
			coding := s.coding
			*s = HeadScanner{}
			if coding {
				return b[:end], ErrCoding
			}
			return b[:end], nil
		}
		// Each line as it completes, a bare CR included, so that a head
		// that cannot be read is refused before it ends, as fasthttp's
		// parser refuses what it cannot parse.
		if err := CheckLine(line, i == 0, request); err == ErrCoding {
			s.coding = true
		} else if err != nil {
			return nil, err
		}
		if i == 0 {
			s.first = len(line)
		}
		i = end
		s.next, s.lines = i, s.lines+1
	}
}

// CompleteHead is Scan from the start of b, for heads read whole.
func CompleteHead(b []byte, max int, request bool) ([]byte, error) {
	var s HeadScanner
	return s.Scan(b, max, request)
}

// SkipEmptyLines returns how many bytes of empty lines (CRLF) b starts
// with: RFC 9112, section 2.2, has a server ignore those before a request
// line, which some clients send after a body.
func SkipEmptyLines(b []byte) int {
	n := 0
	for n+1 < len(b) && b[n] == '\r' && b[n+1] == '\n' {
		n += 2
	}
	return n
}

// CheckFields checks the framing of a block of header lines, each ending in
// CRLF, up to and including the blank line that ends them, as a parser
// kept them (fasthttp's RawHeaders): the same checks Scan makes, for heads
// that a parser of its own has read.
func CheckFields(block []byte, request bool) error {
	for len(block) > 0 {
		lf := bytes.IndexByte(block, '\n')
		if lf < 0 {
			return ErrBareLF // cut short: only a parser's bug leaves this
		}
		if lf == 0 || block[lf-1] != '\r' {
			return ErrBareLF
		}
		line := block[:lf-1]
		if len(line) == 0 {
			return nil
		}
		if err := CheckLine(line, false, request); err != nil {
			return err
		}
		block = block[lf+1:]
	}
	return nil
}

// CheckLine checks one line of a head, without its CRLF: no CR within it;
// the start line (first) not beginning with whitespace; a header line
// beginning with a name of token characters (RFC 9110, section 5.6.2) and
// its colon, with no whitespace between them (RFC 9112, section 5.1), and
// no obsolete folding. In a request, a Transfer-Encoding other than
// chunked fails with ErrCoding: podedge forwards no other coding (RFC 9112,
// section 6.1, and 501 of RFC 9110, section 15.6.2).
func CheckLine(line []byte, first, request bool) error {
	if bytes.IndexByte(line, '\r') >= 0 {
		return ErrBareCR
	}
	if line[0] == ' ' || line[0] == '\t' {
		return ErrObsFold
	}
	if first {
		return nil
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return ErrFieldName
	}
	for _, c := range line[:colon] {
		if !tchar[c] {
			return ErrFieldName
		}
	}
	if request && colon == len(transferEncoding) && asciiEqualFold(line[:colon], transferEncoding) &&
		!asciiEqualFold(bytes.Trim(line[colon+1:], " \t"), chunked) {
		return ErrCoding
	}
	return nil
}

var (
	transferEncoding = []byte("transfer-encoding")
	chunked          = []byte("chunked")
)

// asciiEqualFold compares b with lower, which is lower case, ignoring the
// case of ASCII letters in b.
func asciiEqualFold(b, lower []byte) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// tchar holds the token characters of RFC 9110, section 5.6.2.
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range []byte("!#$%&'*+-.^_`|~") {
		t[c] = true
	}
	return t
}()

// Header is what fasthttp's RequestHeader and ResponseHeader have in common
// for reading.
type Header interface {
	Read(*bufio.Reader) error
}

// Parser parses complete heads, reusing its reader: one per goroutine.
type Parser struct {
	rd bytes.Reader
	br *bufio.Reader
}

// NewParser returns a parser for heads of at most max bytes.
func NewParser(max int) *Parser {
	p := &Parser{}
	p.br = bufio.NewReaderSize(&p.rd, max)
	return p
}

// Parse reads the complete head b into h.
func (p *Parser) Parse(h Header, head []byte) error {
	p.rd.Reset(head)
	p.br.Reset(&p.rd)
	return h.Read(p.br)
}

// ErrChunk is a chunked body whose framing is malformed.
var ErrChunk = errors.New("malformed chunked body")

// Chunked follows a chunked body (RFC 9112, section 7.1) as its bytes pass
// by, to tell where it ends; the bytes themselves pass on unchanged. The zero
// value is at the start of a body.
type Chunked struct {
	state  chunkState
	left   uint64 // data bytes left in the current chunk
	digits int
	colon  bool // the trailer line so far has its name and colon
	begun  bool // part of the trailer line's name came in an earlier Scan
}

type chunkState uint8

const (
	chunkSize    chunkState = iota // the chunk size's hex digits
	chunkBWS                       // blanks after the size
	chunkExt                       // extensions, up to the line's CR
	chunkSizeLF                    // the size line's LF
	chunkData                      // the chunk's data
	chunkDataCR                    // the CR after the data
	chunkDataLF                    // the LF after the data
	trailerStart                   // the start of a trailer line, or the final CRLF
	trailerLine                    // a trailer field, up to the line's CR
	trailerLF                      // the LF of a trailer line
	finalLF                        // the LF of the final CRLF
	chunkDone
)

// maxSizeDigits bounds a chunk size: 15 hex digits are more than any body.
const maxSizeDigits = 15

// Scan takes the next bytes of the body and returns how many of them belong
// to it: all of b, or fewer when the body ended within b (done), the rest
// being the next message. A malformed body fails with ErrChunk.
func (c *Chunked) Scan(b []byte) (n int, done bool, err error) {
	for n < len(b) {
		ch := b[n]
		switch c.state {
		case chunkSize:
			switch d := hexValue(ch); {
			case d >= 0:
				if c.digits == maxSizeDigits {
					return n, false, ErrChunk
				}
				c.left = c.left<<4 | uint64(d)
				c.digits++
			case c.digits == 0:
				return n, false, ErrChunk
			case ch == ' ' || ch == '\t':
				c.state = chunkBWS
			case ch == ';':
				c.state = chunkExt
			case ch == '\r':
				c.state = chunkSizeLF
			default:
				return n, false, ErrChunk
			}
			n++
		case chunkBWS:
			switch ch {
			case ' ', '\t':
			case ';':
				c.state = chunkExt
			case '\r':
				c.state = chunkSizeLF
			default:
				return n, false, ErrChunk
			}
			n++
		case chunkExt:
			if i := bytes.IndexAny(b[n:], "\r\n"); i >= 0 {
				if b[n+i] == '\n' {
					return n + i, false, ErrChunk // a bare LF
				}
				n += i + 1
				c.state = chunkSizeLF
				continue
			}
			n = len(b)
		case chunkSizeLF:
			if ch != '\n' {
				return n, false, ErrChunk
			}
			n++
			c.digits = 0
			if c.left == 0 {
				c.state = trailerStart
			} else {
				c.state = chunkData
			}
		case chunkData:
			take := uint64(len(b) - n)
			if take > c.left {
				take = c.left
			}
			n += int(take)
			if c.left -= take; c.left == 0 {
				c.state = chunkDataCR
			}
		case chunkDataCR:
			if ch != '\r' {
				return n, false, ErrChunk
			}
			n++
			c.state = chunkDataLF
		case chunkDataLF:
			if ch != '\n' {
				return n, false, ErrChunk
			}
			n++
			c.state = chunkSize
		case trailerStart:
			if ch == '\r' {
				n++
				c.state = finalLF
			} else {
				c.state, c.colon, c.begun = trailerLine, false, false
			}
		case trailerLine:
			i := bytes.IndexAny(b[n:], "\r\n")
			line := b[n:]
			if i >= 0 {
				line = line[:i]
			}
			// A field's name is a token ended by a colon (RFC 9110,
			// section 5.1): no obsolete folding (a line that begins with
			// a blank), no blank before the colon, no empty name.
			if !c.colon {
				name := line
				if j := bytes.IndexByte(line, ':'); j >= 0 {
					if j == 0 && !c.begun {
						return n, false, ErrChunk
					}
					name, c.colon = line[:j], true
				}
				for _, ch := range name {
					if !tchar[ch] {
						return n, false, ErrChunk
					}
				}
			}
			if i < 0 {
				n = len(b)
				c.begun = true
				continue
			}
			if b[n+i] == '\n' || !c.colon {
				return n + i, false, ErrChunk // a bare LF, or a line that is no field
			}
			n += i + 1
			c.state = trailerLF
		case trailerLF:
			if ch != '\n' {
				return n, false, ErrChunk
			}
			n++
			c.state = trailerStart
		case finalLF:
			if ch != '\n' {
				return n, false, ErrChunk
			}
			c.state = chunkDone
			return n + 1, true, nil
		case chunkDone:
			return n, true, nil
		}
	}
	return n, c.state == chunkDone, nil
}

func hexValue(ch byte) int {
	switch {
	case '0' <= ch && ch <= '9':
		return int(ch - '0')
	case 'a' <= ch && ch <= 'f':
		return int(ch-'a') + 10
	case 'A' <= ch && ch <= 'F':
		return int(ch-'A') + 10
	}
	return -1
}
