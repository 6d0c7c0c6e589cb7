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

var headEnd = []byte("\r\n\r\n")

// CompleteHead returns the message head at the start of b, through its blank
// line, or nil while it is incomplete; tooLarge when it is longer than max
// bytes, or will be.
func CompleteHead(b []byte, max int) (head []byte, tooLarge bool) {
	end := bytes.Index(b, headEnd)
	if end < 0 {
		return nil, len(b) > max
	}
	end += len(headEnd)
	return b[:end], end > max
}

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
	colon  bool // the trailer line so far has its colon
	begun  bool // part of the trailer line came in an earlier Scan
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
			// A colon ends a field's name, which cannot be empty.
			if j := bytes.IndexByte(line, ':'); j > 0 || j == 0 && c.begun {
				c.colon = true
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
