package edge

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/valyala/fasthttp"
)

// DialError is a failure to open a connection to an endpoint. Nothing of the
// request was sent, so any request, whatever its method, may be retried on
// another endpoint.
type DialError struct {
	// Addr is the endpoint's host:port.
	Addr string
	Err  error
}

func (e *DialError) Error() string { return "dial " + e.Addr + ": " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// Stages of an exchange with an endpoint, in order. An error's stage tells
// whether the endpoint may have seen the request and whether any of its
// answer arrived.
type stage uint8

const (
	// stageWrite: sending the request head or body failed.
	stageWrite stage = iota + 1
	// stageWait: the request was sent and no byte of an answer arrived.
	stageWait
	// stageHead: part of the answer arrived, but its head did not parse.
	stageHead
	// stageBody: the head arrived and reading the body failed.
	stageBody
)

// UpstreamError is a failure of an endpoint after the connection was open.
type UpstreamError struct {
	// Addr is the endpoint's host:port.
	Addr  string
	stage stage
	Err   error
	// stale marks a pooled connection the endpoint had closed while idle:
	// not the endpoint's fault, so passive health ignores it.
	stale bool
}

func (e *UpstreamError) Error() string {
	what := "upstream " + e.Addr
	switch e.stage {
	case stageWrite:
		what += ": sending request"
	case stageWait:
		what += ": waiting for response"
	case stageHead:
		what += ": reading response head"
	case stageBody:
		what += ": reading response body"
	}
	return what + ": " + e.Err.Error()
}

func (e *UpstreamError) Unwrap() error { return e.Err }

// Timeout reports whether the endpoint was too slow rather than broken.
func (e *UpstreamError) Timeout() bool { return isTimeout(e.Err) }

// beforeResponse reports whether the error came before any byte of the
// response, the condition for retrying an idempotent request.
func (e *UpstreamError) beforeResponse() bool { return e.stage <= stageWait }

// clientError is a failure on the client's side of a request: its body could
// not be read, or is larger than allowed. It is never the endpoint's fault.
type clientError struct {
	status int
	err    error
}

func (e *clientError) Error() string { return "client: " + e.err.Error() }
func (e *clientError) Unwrap() error { return e.err }

// Errors that end a request before any endpoint is tried, or after all failed.
var (
	errUnknownHost = errors.New("no tenant for this host")
	errNoEndpoint  = errors.New("no usable endpoint in the pod")
	errLoop        = errors.New("request already forwarded by an edge; refusing to forward it again")
	errNoFreeConns = errors.New("connection limit to the endpoint reached")
	// errNotIPPort is an endpoint registered by name: the edge makes no
	// name lookups on its data paths.
	errNotIPPort    = errors.New("endpoint address is not ip:port")
	errBodyTooLarge = errors.New("request body larger than limits.max_body_bytes")
	errConnect      = errors.New("CONNECT is not proxied")
	errNoRegistry   = errors.New("endpoint has no connection pool: the router was not given Proxy.Registry")
)

// timeoutError is what net and fasthttp errors implement to say they timed out.
type timeoutError interface {
	error
	Timeout() bool
}

func isTimeout(err error) bool {
	if t, ok := errors.AsType[timeoutError](err); ok && t.Timeout() {
		return true
	}
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// isReset reports whether err means the peer closed or reset the connection.
func isReset(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, fasthttp.ErrConnectionClosed)
}

// isDial reports whether err is a DialError: nothing was sent.
func isDial(err error) bool {
	_, ok := errors.AsType[*DialError](err)
	return ok
}

// errorKind is the bounded label value that metrics give an upstream error.
func errorKind(err error) string {
	switch {
	case isDial(err):
		return "dial"
	case isTimeout(err):
		return "timeout"
	case isReset(err):
		return "reset"
	}
	return "protocol"
}

// statusFor maps an error to the status the client gets.
func statusFor(err error) int {
	if ce, ok := errors.AsType[*clientError](err); ok {
		return ce.status
	}
	switch {
	case err == errRateLimited, err == errConnsLimited:
		return fasthttp.StatusTooManyRequests
	case err == errConcurrencyLimited:
		return fasthttp.StatusServiceUnavailable
	case errors.Is(err, errUnknownHost):
		return fasthttp.StatusNotFound
	case errors.Is(err, errNoEndpoint), errors.Is(err, errNoFreeConns):
		return fasthttp.StatusServiceUnavailable
	case isTimeout(err):
		return fasthttp.StatusGatewayTimeout
	}
	return fasthttp.StatusBadGateway
}

// reason is the one-line body of error responses. They name what went
// wrong from the client's point of view and never an internal address.
func reason(status int, err error) string {
	switch {
	case errors.Is(err, errLoop):
		return "bad gateway: forwarding loop\n"
	case err == errConcurrencyLimited:
		return "service unavailable: too many requests in flight for this site\n"
	}
	switch status {
	case fasthttp.StatusBadRequest:
		return "bad request\n"
	case fasthttp.StatusNotFound:
		return "unknown host\n"
	case fasthttp.StatusMethodNotAllowed:
		return "method not allowed\n"
	case fasthttp.StatusRequestTimeout:
		return "request timeout\n"
	case fasthttp.StatusRequestEntityTooLarge:
		return "request body too large\n"
	case fasthttp.StatusRequestHeaderFieldsTooLarge:
		return "request header too large\n"
	case fasthttp.StatusTooManyRequests:
		return "too many requests\n"
	case fasthttp.StatusServiceUnavailable:
		return "service unavailable: no healthy upstream\n"
	case fasthttp.StatusGatewayTimeout:
		return "gateway timeout: upstream did not answer in time\n"
	}
	return "bad gateway: upstream failed\n"
}

// writeError is the default ErrorHandler: a plain-text line with the status,
// and Retry-After on 503 so that clients and crawlers come back soon.
func writeError(ctx *fasthttp.RequestCtx, status int, err error, retryAfter []byte) {
	ctx.Response.SetStatusCode(status)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	if status == fasthttp.StatusServiceUnavailable && len(retryAfter) > 0 {
		ctx.Response.Header.SetBytesV("Retry-After", retryAfter)
	}
	ctx.Response.SetBodyString(reason(status, err))
}
