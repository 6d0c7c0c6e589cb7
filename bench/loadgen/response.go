package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// errProtocol is a response that is not HTTP/1.x as the bench expects.
var errProtocol = errors.New("malformed response")

// readResponse reads one response from r, discarding its body. closeConn
// is true when the server closes the connection after it (HTTP/1.0,
// "Connection: close" or a body delimited by the close).
func readResponse(r *bufio.Reader) (status int, closeConn bool, err error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[8] != ' ' {
		return 0, false, fmt.Errorf("%w: status line %q", errProtocol, line)
	}
	status, ok := atoi(line[9:12])
	if !ok {
		return 0, false, fmt.Errorf("%w: status line %q", errProtocol, line)
	}
	closeConn = line[7] == '0'
	length, chunked := -1, false
	for {
		line, err = r.ReadSlice('\n')
		if err != nil {
			return 0, false, unexpected(err)
		}
		line = trimSpace(line)
		if len(line) == 0 {
			break
		}
		name, value, ok := cut(line)
		if !ok {
			return 0, false, fmt.Errorf("%w: header line %q", errProtocol, line)
		}
		switch {
		case equalFold(name, "content-length"):
			if length, ok = atoi(value); !ok {
				return 0, false, fmt.Errorf("%w: content-length %q", errProtocol, value)
			}
		case equalFold(name, "transfer-encoding"):
			chunked = equalFold(value, "chunked")
		case equalFold(name, "connection"):
			if equalFold(value, "close") {
				closeConn = true
			}
		}
	}
	switch {
	case status == 204 || status == 304 || status < 200:
		return status, closeConn, nil
	case chunked:
		return status, closeConn, discardChunked(r)
	case length >= 0:
		_, err := r.Discard(length)
		return status, closeConn, unexpected(err)
	default:
		_, err := io.Copy(io.Discard, r)
		return status, true, err
	}
}

func discardChunked(r *bufio.Reader) error {
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return unexpected(err)
		}
		size := 0
		for _, c := range trimSpace(line) {
			var d int
			switch {
			case c >= '0' && c <= '9':
				d = int(c - '0')
			case c >= 'a' && c <= 'f':
				d = int(c-'a') + 10
			case c >= 'A' && c <= 'F':
				d = int(c-'A') + 10
			default:
				d = -1
			}
			if d < 0 {
				break // chunk extension
			}
			size = size*16 + d
		}
		if size == 0 {
			// Trailers, up to the empty line.
			for {
				line, err := r.ReadSlice('\n')
				if err != nil {
					return unexpected(err)
				}
				if len(trimSpace(line)) == 0 {
					return nil
				}
			}
		}
		if _, err := r.Discard(size + 2); err != nil {
			return unexpected(err)
		}
	}
}

// unexpected turns io.EOF inside a response into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 12 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r' || b[len(b)-1] == '\n') {
		b = b[:len(b)-1]
	}
	return b
}

// cut splits a header line at its colon, trimming the value.
func cut(line []byte) (name, value []byte, ok bool) {
	for i, c := range line {
		if c == ':' {
			return line[:i], trimSpace(line[i+1:]), true
		}
	}
	return nil, nil, false
}

// equalFold compares ASCII b with lower-case s, ignoring case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
