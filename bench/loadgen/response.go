package loadgen

import (
	"bufio"
	"bytes"
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
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			return 0, false, fmt.Errorf("%w: header line %q", errProtocol, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("content-length")):
			if length, ok = atoi(value); !ok {
				return 0, false, fmt.Errorf("%w: content-length %q", errProtocol, value)
			}
		case bytes.EqualFold(name, []byte("transfer-encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("connection")):
			if bytes.EqualFold(value, []byte("close")) {
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
		for _, c := range bytes.TrimSpace(line) {
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
				if len(bytes.TrimSpace(line)) == 0 {
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
