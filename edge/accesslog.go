package edge

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
	"unsafe"
)

// accessLogger writes one JSON line per request through a slog.Handler.
//
// It builds the slog.Record itself, with a zero PC: slog.Logger would walk the
// stack for every line to find a source position nobody reads. The fields are
// one LogValuer attribute with an empty key, which handlers inline, so that
// the record keeps them in place instead of allocating room for a tenth.
type accessLogger struct {
	h slog.Handler
}

func (a *accessLogger) log(x *exchange) {
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "access", 0)
	r.AddAttrs(slog.Attr{Value: slog.AnyValue((*accessEntry)(x))})
	_ = a.h.Handle(context.Background(), r)
}

// accessEntry is an exchange seen as an access log line. Its byte fields are
// the exchange's own copies, made before the handler returned, so nothing of
// the RequestCtx is read after its lifetime.
type accessEntry exchange

func (e *accessEntry) LogValue() slog.Value {
	x := (*exchange)(e)
	a := x.attrs[:0]
	a = append(a,
		slog.String("host", unsafeString(x.host)),
		slog.String("method", unsafeString(x.method)),
		slog.String("path", unsafeString(x.uri)),
		slog.Int("status", x.status),
		slog.Int64("bytes", x.bytes),
		slog.Float64("duration_ms", float64(x.elapsed.Microseconds())/1000),
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
	if x.err != nil {
		a = append(a, slog.String("error", x.err.Error()))
	}
	return slog.GroupValue(a...)
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

func (w *bufferedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf)+len(p) > w.limit {
		if err := w.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > w.limit {
			return w.out.Write(p)
		}
	}
	w.buf = append(w.buf, p...)
	return len(p), nil
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
