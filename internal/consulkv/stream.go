package consulkv

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/podedge/podedge/router"
)

// stream reads a JSON answer from a reader a window at a time, so that an
// answer of any size costs a buffer the size of its largest entry (a KV
// value is at most 512 KB), not the answer: at 1,000,000 tenants a read of
// the tenants' folder is 300 MB of JSON.
//
// It reads the outer structure (the list, the transaction's object) itself
// and hands each complete element to the in-place scanner, which may then
// unescape it in place: the element is never read again.
type stream struct {
	r    io.Reader
	buf  []byte
	off  int // start of the unread bytes, buf[off:]
	read int // bytes read before buf[0], for errors
	eof  bool
	err  error // of the reader, once it failed
}

// streamWindow is the window's first size; it doubles while an element
// does not fit.
const streamWindow = 256 << 10

// newStream reads r through a window of size bytes to start with.
func newStream(r io.Reader, size int) *stream {
	return &stream{r: r, buf: make([]byte, 0, max(size, 16))}
}

// more reads at least one more byte into the window, moving the unread
// bytes to its start and growing it when it is full. It reports false at
// the end of the answer or on a read error (s.err).
func (s *stream) more() bool {
	if s.eof {
		return false
	}
	if s.off > 0 {
		n := copy(s.buf, s.buf[s.off:])
		s.read += s.off
		s.buf, s.off = s.buf[:n], 0
	}
	if len(s.buf) == cap(s.buf) {
		s.buf = append(s.buf, 0)[:len(s.buf)] // grows the capacity
	}
	for {
		n, err := s.r.Read(s.buf[len(s.buf):cap(s.buf)])
		s.buf = s.buf[:len(s.buf)+n]
		if err != nil {
			s.eof = true
			if !errors.Is(err, io.EOF) {
				s.err = fmt.Errorf("read answer: %w", err)
			}
			return n > 0
		}
		if n > 0 {
			return true
		}
	}
}

// space skips white space and returns the next byte, 0 at the end.
func (s *stream) space() byte {
	for {
		for s.off < len(s.buf) {
			switch c := s.buf[s.off]; c {
			case ' ', '\t', '\n', '\r':
				s.off++
			default:
				return c
			}
		}
		if !s.more() {
			return 0
		}
	}
}

// expect consumes c, after white space.
func (s *stream) expect(c byte) error {
	if got := s.space(); got != c {
		return s.fail(fmt.Errorf("want %q, found %s", c, show(got)))
	}
	s.off++
	return nil
}

// element returns a scanner over the complete JSON value that starts at
// the next byte, reading as much as it takes, and moves past it.
func (s *stream) element() (scanner, error) {
	if s.space() == 0 {
		return scanner{}, s.fail(fmt.Errorf("want a value, found the end"))
	}
	for {
		if end, ok := valueEnd(s.buf[s.off:]); ok {
			sc := scanner{b: s.buf[s.off : s.off+end]}
			s.off += end
			return sc, nil
		}
		if !s.more() {
			if s.err != nil {
				return scanner{}, s.err
			}
			// Incomplete at the end: the scanner says what is wrong.
			sc := scanner{b: s.buf[s.off:]}
			s.off = len(s.buf)
			return sc, nil
		}
	}
}

// done checks that the scanner read the whole element: valueEnd only
// found where it ends.
func (sc *scanner) done() error {
	if sc.space(); sc.i != len(sc.b) {
		return fmt.Errorf("%s after a value", show(sc.b[sc.i]))
	}
	return nil
}

// fail returns err, or the reader's error that caused it.
func (s *stream) fail(err error) error {
	if s.err != nil {
		return s.err
	}
	return err
}

// at is the offset in the answer of the next byte, for errors.
func (s *stream) at() int { return s.read + s.off }

// end checks that nothing but white space follows.
func (s *stream) end() error {
	if c := s.space(); c != 0 {
		return fmt.Errorf("%s after the answer", show(c))
	}
	return s.fail(nil)
}

// valueEnd returns the length of the JSON value b starts with, or false
// when b ends before it does. It only finds the end: a malformed value
// ends somewhere, and the scanner then says what is wrong with it.
func valueEnd(b []byte) (int, bool) {
	depth := 0
	for i := 0; i < len(b); {
		switch c := b[i]; c {
		case '"':
			j, ok := stringEnd(b, i+1)
			if !ok {
				return 0, false
			}
			if i = j; depth == 0 {
				return i, true
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth <= 0 {
				return i + 1, true
			}
		default:
			if depth == 0 {
				// A scalar runs to a delimiter, which must have been read.
				for j := i; j < len(b); j++ {
					switch b[j] {
					case ',', ']', '}', ' ', '\t', '\n', '\r', '"', '{', '[':
						return j, true
					}
				}
				return 0, false
			}
		}
		i++
	}
	return 0, false
}

// stringEnd returns the offset past the quote that closes the string whose
// contents start at b[i].
func stringEnd(b []byte, i int) (int, bool) {
	for {
		q := bytes.IndexByte(b[i:], '"')
		if q < 0 {
			return 0, false
		}
		j := i + q
		// Escaped when an odd number of backslashes precede it.
		n := 0
		for k := j - 1; k >= i && b[k] == '\\'; k-- {
			n++
		}
		if n%2 == 0 {
			return j + 1, true
		}
		i = j + 1
	}
}

// streamList reads a recursive list's answer, a JSON array of entries,
// calling fn with each entry as soon as it is read. The entry points into
// the window: it is valid only during the call.
func streamList(s *stream, fn func(*router.KVEntry) error) error {
	if err := s.list(fn); err != nil {
		return fmt.Errorf("answer is not a list of keys: at byte %d: %w", s.at(), err)
	}
	return nil
}

func (s *stream) list(fn func(*router.KVEntry) error) error {
	var e router.KVEntry // one for all: fn's argument escapes
	err := s.array(func(sc scanner) error {
		var err error
		if e, err = sc.entry(); err == nil {
			err = sc.done()
		}
		if err != nil {
			return s.fail(err)
		}
		return fn(&e)
	})
	if err != nil {
		return err
	}
	return s.end()
}

// array reads a JSON array, after white space, handing each element to
// each as soon as it is whole, and moves past its closing bracket.
func (s *stream) array(each func(sc scanner) error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	if s.space() == ']' {
		s.off++
		return nil
	}
	for {
		sc, err := s.element()
		if err != nil {
			return err
		}
		if err := each(sc); err != nil {
			return err
		}
		switch c := s.space(); c {
		case ',':
			s.off++
		case ']':
			s.off++
			return nil
		default:
			return s.fail(fmt.Errorf("want , or ] after an entry, found %s", show(c)))
		}
	}
}

// streamTxn reads a read-only transaction's answer,
// {"Results":[{"KV":{...}},...],"Errors":null}, calling fn with the entry
// of each KV result, in order, as soon as it is read.
func streamTxn(s *stream, fn func(*router.KVEntry) error) error {
	if err := s.txn(fn); err != nil {
		return fmt.Errorf("answer is not a transaction's: at byte %d: %w", s.at(), err)
	}
	return nil
}

func (s *stream) txn(fn func(*router.KVEntry) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if s.space() == '}' {
		s.off++
		return s.end()
	}
	for {
		sc, err := s.element()
		if err != nil {
			return err
		}
		if sc.peek() != '"' {
			return s.fail(fmt.Errorf("want a field name, found %s", show(sc.peek())))
		}
		name, err := sc.str()
		if err == nil {
			err = sc.done()
		}
		if err != nil {
			return s.fail(err)
		}
		// name points into the window, which the next read may move.
		results := bytes.EqualFold(name, []byte("Results"))
		field := []byte("other")
		if bytes.EqualFold(name, []byte("Errors")) {
			field = []byte("Errors")
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if results {
			err = s.results(fn)
		} else if sc, err = s.element(); err == nil {
			// Errors, or a field of a later version.
			if err = sc.txnField(field); err == nil {
				err = sc.done()
			}
		}
		if err != nil {
			return s.fail(err)
		}
		switch c := s.space(); c {
		case ',':
			s.off++
		case '}':
			s.off++
			return s.end()
		default:
			return s.fail(fmt.Errorf("want , or } in an object, found %s", show(c)))
		}
	}
}

// results reads the transaction's results, one element at a time.
func (s *stream) results(fn func(*router.KVEntry) error) error {
	if s.space() == 'n' {
		sc, err := s.element()
		if err != nil {
			return err
		}
		if err := sc.skip(); err != nil { // null
			return err
		}
		return sc.done()
	}
	var e router.KVEntry // one for all: fn's argument escapes
	return s.array(func(sc scanner) error {
		if err := sc.result(&e, fn); err != nil {
			return err
		}
		return sc.done()
	})
}
