package loadgen

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podedge/podedge/bench/backend"
)

// countingListener counts the connections it accepted.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startBackend serves the bench backend on a loopback port.
func startBackend(t *testing.T) (string, *countingListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv := backend.New(backend.Config{Name: "app-test", Pod: "pod-1"})
	go srv.Serve(cl)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return ln.Addr().String(), cl
}

func TestKeepAliveReusesConnections(t *testing.T) {
	addr, ln := startBackend(t)
	res, err := Run(context.Background(), Config{Addrs: []string{addr}, Host: "acme.example.test", Path: "/bytes/64", Conns: 4, Duration: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.Failed != 0 {
		t.Fatalf("requests %d, failed %d %v", res.Requests, res.Failed, res.Failures)
	}
	if !(res.P50 > 0 && res.P50 <= res.P99 && res.P99 <= res.Max) {
		t.Fatalf("latencies out of order: p50 %s p99 %s max %s", res.P50, res.P99, res.Max)
	}
	if n := ln.n.Load(); n != 4 {
		t.Fatalf("%d connections for 4 keep-alive workers", n)
	}
}

func TestNewConnectionPerRequest(t *testing.T) {
	addr, ln := startBackend(t)
	res, err := Run(context.Background(), Config{Addrs: []string{addr}, Path: "/bytes/64", Conns: 2, Duration: 200 * time.Millisecond, NewConnPerRequest: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.Failed != 0 {
		t.Fatalf("requests %d, failed %d %v", res.Requests, res.Failed, res.Failures)
	}
	// One connection per request; a request cut short by the end of the
	// run may have connected without being counted.
	if n := ln.n.Load(); n < res.Requests || n > res.Requests+2 {
		t.Fatalf("%d connections for %d requests", n, res.Requests)
	}
}

// A TLS run with a new connection per request makes a full handshake, with
// the Host as SNI, for every request.
func TestNewTLSConnectionPerRequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert := selfSigned(t, "acme.example.test")
	var full atomic.Int64
	var sni atomic.Value
	tl := tls.NewListener(ln, &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		// Resumed handshakes ask for no certificate.
		full.Add(1)
		sni.Store(hello.ServerName)
		return &cert, nil
	}})
	srv := backend.New(backend.Config{Name: "app-test", Pod: "pod-1"})
	go srv.Serve(tl)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	res, err := Run(context.Background(), Config{Addrs: []string{ln.Addr().String()}, Host: "acme.example.test", Path: "/bytes/64", Conns: 2,
		Duration: 200 * time.Millisecond, NewConnPerRequest: true,
		TLS: &tls.Config{ServerName: "acme.example.test", MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.Failed != 0 {
		t.Fatalf("requests %d, failed %d %v", res.Requests, res.Failed, res.Failures)
	}
	if n := full.Load(); n < res.Requests || n > res.Requests+2 {
		t.Fatalf("%d full handshakes for %d requests", n, res.Requests)
	}
	if got := sni.Load(); got != "acme.example.test" {
		t.Fatalf("SNI %q", got)
	}
}

// A handshake the server refuses is a "tls" failure.
func TestRefusedHandshakesAreTLSFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := tls.NewListener(ln, &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return nil, io.ErrUnexpectedEOF
	}})
	defer tl.Close()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
			}()
		}
	}()
	res, err := Run(context.Background(), Config{Addrs: []string{ln.Addr().String()}, Conns: 1, Duration: 50 * time.Millisecond,
		TLS: &tls.Config{ServerName: "acme.example.test", InsecureSkipVerify: true}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Failures["tls"] == 0 || len(res.Failures) != 1 {
		t.Fatalf("failures %v", res.Failures)
	}
}

// selfSigned is an ECDSA P-256 certificate for name.
func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestFailuresAreCountedByKind(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Every other connection gets a 502, the others are closed halfway
	// through the response.
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn, bad bool) {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := readRequest(br); err != nil {
						return
					}
					if bad {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
						return
					}
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\n\r\nbad\n")
				}
			}(c, i%2 == 1)
		}
	}()
	res, err := Run(context.Background(), Config{Addrs: []string{ln.Addr().String()}, Conns: 2, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Failures["status 502"] == 0 || res.Failures["closed"] == 0 {
		t.Fatalf("requests %d, failures %v", res.Requests, res.Failures)
	}
	if res.Failed != res.Failures["status 502"]+res.Failures["closed"] {
		t.Fatalf("failed %d does not add up: %v", res.Failed, res.Failures)
	}
}

func TestRefusedConnectionsAreDialFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res, err := Run(context.Background(), Config{Addrs: []string{addr}, Conns: 1, Duration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Failures["dial: connection refused"] == 0 || len(res.Failures) != 1 {
		t.Fatalf("failures %v", res.Failures)
	}
}

// readRequest reads a request head.
func readRequest(br *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		b.WriteString(line)
		if line == "\r\n" {
			return b.String(), nil
		}
	}
}

func TestReadResponse(t *testing.T) {
	for _, c := range []struct {
		name, raw  string
		status     int
		closeConn  bool
		wantErr    bool
		leftBehind string
	}{
		{name: "content-length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcNEXT", status: 200, leftBehind: "NEXT"},
		{name: "header case and spaces", raw: "HTTP/1.1 200 OK\r\ncontent-LENGTH:   2  \r\n\r\nabNEXT", status: 200, leftBehind: "NEXT"},
		{name: "chunked with extension and trailer", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\nNEXT", status: 200, leftBehind: "NEXT"},
		{name: "connection close", raw: "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", status: 503, closeConn: true},
		{name: "HTTP/1.0", raw: "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", status: 200, closeConn: true},
		{name: "delimited by close", raw: "HTTP/1.1 200 OK\r\n\r\nbody until EOF", status: 200, closeConn: true},
		{name: "no body on 204", raw: "HTTP/1.1 204 No Content\r\n\r\nNEXT", status: 204, leftBehind: "NEXT"},
		{name: "truncated body", raw: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", wantErr: true},
		{name: "not HTTP", raw: "SSH-2.0-OpenSSH\r\n\r\n", wantErr: true},
		{name: "bad length", raw: "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", wantErr: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := bufio.NewReader(strings.NewReader(c.raw))
			status, closeConn, err := readResponse(r)
			if c.wantErr {
				if err == nil {
					t.Fatalf("no error for %q", c.raw)
				}
				return
			}
			if err != nil || status != c.status || closeConn != c.closeConn {
				t.Fatalf("got %d, close %v, %v; want %d, close %v", status, closeConn, err, c.status, c.closeConn)
			}
			if rest, _ := io.ReadAll(r); string(rest) != c.leftBehind {
				t.Fatalf("left %q behind, want %q", rest, c.leftBehind)
			}
		})
	}
}

func TestRatePacesRequests(t *testing.T) {
	addr, _ := startBackend(t)
	res, err := Run(context.Background(), Config{Addrs: []string{addr}, Path: "/bytes/64", Conns: 4, Rate: 200, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// 200 a second for a second; unpaced, a backend on loopback answers
	// thousands.
	if res.Requests < 150 || res.Requests > 210 || res.Failed != 0 {
		t.Fatalf("%d requests (%d failed) at 200/s over 1s, want about 200", res.Requests, res.Failed)
	}
}
