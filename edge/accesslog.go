package edge

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"
)

// accessLogger writes one line per request through a slog.Handler.
//
// It builds the slog.Record itself, with a zero PC: slog.Logger would walk the
// stack for every line to find a source position nobody reads. The fields are
// one LogValuer attribute with an empty key, which handlers inline, so that
// the record keeps them in place instead of allocating room for a tenth.
type accessLogger struct {
	h slog.Handler
}

func (a *accessLogger) log(x *exchange, end time.Time) {
	r := slog.NewRecord(end, slog.LevelInfo, "access", 0)
	r.AddAttrs(slog.Attr{Value: slog.AnyValue((*accessEntry)(x))})
	_ = a.h.Handle(context.Background(), r)
}

// accessEntry is an exchange seen as an access log line. Its byte fields are
// the exchange's own copies, made before the handler returned, so nothing of
// the RequestCtx is read after its lifetime.
type accessEntry exchange

// LogValue gives any slog handler the line's fields.
func (e *accessEntry) LogValue() slog.Value {
	x := (*exchange)(e)
	a := x.attrs[:0]
	a = append(a,
		slog.String("host", unsafeString(x.host)),
		slog.String("method", unsafeString(x.method)),
		slog.String("path", unsafeString(x.uri)),
		slog.Int("status", x.status),
		slog.Int64("bytes", x.bytes),
		slog.Int64("duration_us", x.elapsed.Microseconds()),
		slog.String("client_ip", unsafeString(x.clientIP)),
		slog.String("request_id", unsafeString(x.reqID)),
	)
	if x.pod != nil && x.pod.name != "" {
		a = append(a, slog.String("pod", x.pod.name))
	}
	if x.upstreamAddr != "" {
		a = append(a, slog.String("upstream", x.upstreamAddr))
	}
	if x.attempts > 1 {
		a = append(a, slog.Int("attempts", x.attempts))
	}
	if x.adm.refused != limitNone {
		a = append(a, slog.String("limit", limitNames[x.adm.refused]))
	}
	if x.err != nil {
		a = append(a, slog.String("error", x.err.Error()))
	}
	return slog.GroupValue(a...)
}

// appendJSON appends the fields as LogValue gives them, in JSON.
func (e *accessEntry) appendJSON(b []byte) []byte {
	x := (*exchange)(e)
	b = appendJSONField(b, "host", x.host)
	b = appendJSONField(b, "method", x.method)
	b = appendJSONField(b, "path", x.uri)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(x.status), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, x.bytes, 10)
	b = append(b, `,"duration_us":`...)
	b = strconv.AppendInt(b, x.elapsed.Microseconds(), 10)
	b = appendJSONField(b, "client_ip", x.clientIP)
	b = appendJSONField(b, "request_id", x.reqID)
	if x.pod != nil && x.pod.name != "" {
		b = appendJSONField(b, "pod", []byte(x.pod.name))
	}
	if x.upstreamAddr != "" {
		b = appendJSONField(b, "upstream", []byte(x.upstreamAddr))
	}
	if x.attempts > 1 {
		b = append(b, `,"attempts":`...)
		b = strconv.AppendInt(b, int64(x.attempts), 10)
	}
	if x.adm.refused != limitNone {
		b = appendJSONField(b, "limit", []byte(limitNames[x.adm.refused]))
	}
	if x.err != nil {
		b = appendJSONField(b, "error", []byte(x.err.Error()))
	}
	return b
}

// NewAccessLogHandler returns the access log's handler: JSON lines on w, the
// same as slog.NewJSONHandler(w, nil) writes, but with the edge's own access
// records encoded directly, at a third of the JSON handler's cost. Other
// records go through a JSON handler.
func NewAccessLogHandler(w io.Writer) slog.Handler {
	h := &accessHandler{w: w, json: slog.NewJSONHandler(w, nil)}
	h.bufs.New = func() any { b := make([]byte, 0, 1024); return &b }
	return h
}

type accessHandler struct {
	w     io.Writer
	json  slog.Handler
	mu    sync.Mutex // one Write at a time, as slog's handlers do
	bufs  sync.Pool
	clock atomic.Pointer[stamp]
}

// stamp is a second's worth of RFC 3339 timestamp, formatted once: a line
// only adds its fraction. Every line of a busy edge falls in the second
// before, so formatting the date and zone once per second instead of once
// per line saves most of the timestamp's cost.
type stamp struct {
	sec    int64
	loc    *time.Location
	date   []byte // 2006-01-02T15:04:05
	offset []byte // Z or -07:00
}

// appendTime appends t as time.RFC3339Nano does.
func (h *accessHandler) appendTime(b []byte, t time.Time) []byte {
	st := h.clock.Load()
	if st == nil || st.sec != t.Unix() || st.loc != t.Location() {
		st = &stamp{sec: t.Unix(), loc: t.Location(),
			date:   t.AppendFormat(nil, "2006-01-02T15:04:05"),
			offset: t.AppendFormat(nil, "Z07:00")}
		if t.Year() < 0 || t.Year() > 9999 {
			// Outside RFC 3339's four-digit years: no shortcut.
			return t.AppendFormat(b, time.RFC3339Nano)
		}
		h.clock.Store(st)
	}
	b = append(b, st.date...)
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := len(frac)
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, st.offset...)
}

func (h *accessHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.json.Enabled(ctx, l)
}

func (h *accessHandler) WithAttrs(as []slog.Attr) slog.Handler { return h.json.WithAttrs(as) }
func (h *accessHandler) WithGroup(name string) slog.Handler    { return h.json.WithGroup(name) }

func (h *accessHandler) Handle(ctx context.Context, r slog.Record) error {
	var e *accessEntry
	if r.NumAttrs() == 1 {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "" {
				e, _ = a.Value.Any().(*accessEntry)
			}
			return false
		})
	}
	if e == nil || r.Level != slog.LevelInfo {
		return h.json.Handle(ctx, r)
	}
	bp := h.bufs.Get().(*[]byte)
	b := append((*bp)[:0], `{"time":"`...)
	b = h.appendTime(b, r.Time)
	b = append(b, `","level":"INFO","msg":`...)
	b = appendJSONString(b, []byte(r.Message))
	b = e.appendJSON(b)
	b = append(b, "}\n"...)
	h.mu.Lock()
	_, err := h.w.Write(b)
	h.mu.Unlock()
	*bp = b
	h.bufs.Put(bp)
	return err
}

// appendJSONField appends ,"key":"value".
func appendJSONField(b []byte, key string, v []byte) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendJSONString(b, v)
}

// appendJSONString appends s as a JSON string escaped as slog's JSON handler
// escapes it: quotes, backslashes and control bytes escaped, invalid UTF-8
// replaced by U+FFFD, U+2028 and U+2029 escaped. Hosts and paths come from
// clients, so this is what keeps a line one line.
func appendJSONString(b, s []byte) []byte {
	const hexdigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		// Eight plain bytes at a time: hosts, paths and IDs rarely hold
		// anything to escape.
		if i+8 <= len(s) && plainASCII8(binary.LittleEndian.Uint64(s[i:])) {
			i += 8
			continue
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexdigits[c>>4], hexdigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexdigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// plainASCII8 reports whether the eight bytes of w are all printable ASCII
// other than '"' and '\\': bytes a JSON string holds as they are. The word
// tricks are exact for this test (no false answers either way).
func plainASCII8(w uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	hasZero := func(v uint64) uint64 { return (v - ones) & ^v & highs }
	control := (w - ones*0x20) & ^w & highs // a byte below 0x20
	return (w&highs)|control|hasZero(w^(ones*'"'))|hasZero(w^(ones*'\\')) == 0
}

// unsafeString views b as a string without copying. The handler formats it
// before Handle returns and keeps nothing, and b is not written meanwhile.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// bufferedWriter gathers whole log lines and writes them in batches: one
// write(2) per request would cost more than proxying it. Lines wait at most
// flushEvery; Close writes what is left. Each Write is one complete line
// (slog handlers write a record at a time), so lines never interleave.
type bufferedWriter struct {
	out   io.Writer
	limit int

	mu       sync.Mutex
	buf      []byte
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func newBufferedWriter(out io.Writer, size int, flushEvery time.Duration) *bufferedWriter {
	w := &bufferedWriter{out: out, limit: size, buf: make([]byte, 0, size), stop: make(chan struct{}), done: make(chan struct{})}
	go w.flusher(flushEvery)
	return w
}

func (w *bufferedWriter) Write(p []byte) (n int, err error) {
	w.mu.Lock()
	if len(w.buf)+len(p) > w.limit {
		if err = w.flushLocked(); err == nil {
			if len(p) > w.limit {
				n, err = w.out.Write(p)
			} else {
				w.buf = append(w.buf, p...)
				n = len(p)
			}
		}
	} else {
		w.buf = append(w.buf, p...)
		n = len(p)
	}
	w.mu.Unlock()
	return n, err
}

func (w *bufferedWriter) flushLocked() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.out.Write(w.buf)
	w.buf = w.buf[:0]
	return err
}

// Flush writes the buffered lines now.
func (w *bufferedWriter) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

func (w *bufferedWriter) flusher(every time.Duration) {
	defer close(w.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			_ = w.Flush()
		}
	}
}

// Close stops the flusher and writes what is left. It is safe to call twice.
func (w *bufferedWriter) Close() error {
	w.stopOnce.Do(func() { close(w.stop) })
	<-w.done
	return w.Flush()
}
