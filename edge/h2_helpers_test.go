package edge

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/podedge/podedge/router"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// testCert is a self-signed ECDSA P-256 certificate for the test zone's
// names, acme.com and 127.0.0.1, with a pool that trusts it.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "podedge test"},
		DNSNames:     []string{"*.example.test", "example.test", "acme.com"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true,

		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// testTLSConfig is a listener configuration as edge/certs makes one:
// http/1.1 and acme-tls/1 offered, h2 left to the edge.
func testTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1", "acme-tls/1"}}
}

// tlsHarness serves a Proxy on a TLS listener on loopback, HTTP/2 by ALPN
// and HTTP/1.1, with a snapshot built in memory.
type tlsHarness struct {
	p    *Proxy
	h2   *h2Server
	addr string
	pool *x509.CertPool
	cert *x509.Certificate
}

func newTLSHarness(t testing.TB, p *Proxy, st router.State, cfg HTTP2) *tlsHarness {
	t.Helper()
	if p.Logger == nil {
		p.Logger = quiet()
	}
	publish(t, p, st)
	srv := p.newServer(p.ServeHTTP, quiet())
	h2, err := newH2Server(cfg, p, p.ServeHTTP, quiet())
	if err != nil {
		t.Fatal(err)
	}
	cert, pool := testCert(t)
	tc := testTLSConfig(cert)
	h2.register(srv, tc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(tls.NewListener(ln, tc)); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h2.shutdown(ctx)
		_ = srv.ShutdownWithContext(ctx)
		h2.closeAll()
		_ = ln.Close()
		<-done
	})
	return &tlsHarness{p: p, h2: h2, addr: ln.Addr().String(), pool: pool, cert: cert.Leaf}
}

// h2Client is an HTTP/2-only client of the harness: one connection, as
// many streams as the edge allows on it.
func (h *tlsHarness) h2Client(t testing.TB) *http.Client {
	tr := &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: h.pool, ServerName: "acme.example.test"}, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// h1Client is an HTTP/1.1 client over TLS.
func (h *tlsHarness) h1Client(t testing.TB) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:    &tls.Config{RootCAs: h.pool, ServerName: "acme.example.test", NextProtos: []string{"http/1.1"}},
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// twoPods is a platform of pod-1 (tenant acme, custom domain acme.com) on
// apps a, and pod-2 (tenant beta) on apps b; an edge with no pod of its own
// serves both directly.
func twoPods(a, b []*backend) router.State {
	st := router.State{
		Pods: []router.Pod{{Name: "pod-1", Capacity: 10}, {Name: "pod-2", Capacity: 10}},
		Tenants: []router.Tenant{
			{Name: "acme", Pod: "pod-1", Domains: []string{"acme.com"}},
			{Name: "beta", Pod: "pod-2"},
		},
	}
	for _, x := range a {
		st.Apps = append(st.Apps, router.Endpoint{ID: "app-" + x.name, Node: "n", Pod: "pod-1", Addr: x.addr(), Weight: 1, Passing: true})
	}
	for _, x := range b {
		st.Apps = append(st.Apps, router.Endpoint{ID: "app-" + x.name, Node: "n", Pod: "pod-2", Addr: x.addr(), Weight: 1, Passing: true})
	}
	return st
}

// rawH2 is an HTTP/2 client that writes frames by hand, for what real
// clients refuse to send: oversized headers, floods.
type rawH2 struct {
	t    testing.TB
	conn *tls.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	blk  bytes.Buffer
}

func dialRawH2(t testing.TB, addr string, pool *x509.CertPool) *rawH2 {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "acme.example.test", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	c := &rawH2{t: t, conn: conn}
	c.fr = http2.NewFramer(conn, conn)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	c.enc = hpack.NewEncoder(&c.blk)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

// block is the HPACK encoding of a GET of path for host, with extra fields
// (name, value pairs).
func (c *rawH2) block(host, path string, extra ...string) []byte {
	c.blk.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", host}, {":path", path}} {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := 0; i+1 < len(extra); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return bytes.Clone(c.blk.Bytes())
}

// get sends a GET on stream id, its header block split in frames of at
// most 16 KiB (HEADERS, then CONTINUATION).
func (c *rawH2) get(id uint32, blk []byte) error {
	const max = 16 << 10
	first := blk[:min(len(blk), max)]
	rest := blk[len(first):]
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true, EndHeaders: len(rest) == 0}); err != nil {
		return err
	}
	for len(rest) > 0 {
		n := min(len(rest), max)
		if err := c.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

// status reads frames until the response head of stream id, and returns
// its status; connection-level frames are acknowledged or skipped.
func (c *rawH2) status(id uint32) string {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("reading the response of stream %d: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				return f.PseudoValue("status")
			}
		case *http2.GoAwayFrame:
			c.t.Fatalf("GOAWAY %v before the response of stream %d", f.ErrCode, id)
		}
	}
}

// closed reads until the edge ends the connection, and returns the code of
// the GOAWAY it sent first (ErrCodeNo if none).
func (c *rawH2) closed(within time.Duration) (http2.ErrCode, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(within))
	code := http2.ErrCodeNo
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return code, err
			}
			return code, nil
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			code = g.ErrCode
		}
	}
}

// getAtOnce sends GET /0 to GET /<n-1> for acme.example.test through c, all
// at once, and fails t with the first error check returns for a response:
// its body as read, err the error reading it.
func getAtOnce(t *testing.T, c *http.Client, addr string, n int, check func(path string, resp *http.Response, body []byte, err error) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			path := fmt.Sprintf("/%d", i)
			req, _ := http.NewRequest("GET", "https://"+addr+path, nil)
			req.Host = "acme.example.test"
			resp, err := c.Do(req)
			if err != nil {
				errs <- err
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err := check(path, resp, b, err); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
