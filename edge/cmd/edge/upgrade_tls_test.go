package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podedge/podedge/bench/loadgen"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/internal/reload/reloadtest"
)

// operatorCert writes a self-signed certificate for *.example.test and
// its key as PEM files in dir, and returns them with a pool trusting it.
func operatorCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "*.example.test"},
		DNSNames:              []string{"*.example.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(leaf)
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "wildcard.pem"), filepath.Join(dir, "wildcard.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}

// Five SIGHUP reloads, then one failed and five SIGUSR2 upgrades, of a
// real edge with an operator's certificate, under clients that never
// retry: HTTPS with a connection per request, HTTPS on kept-alive
// connections, and plain HTTP on kept-alive connections. Not one request
// fails.
func TestReloadsAndUpgradesUnderHTTPSAndKeepAlive(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary against Consul, under load")
	}
	agent := podOne(t, nil)

	dir := t.TempDir()
	certFile, keyFile, pool := operatorCert(t, dir)
	built := reloadtest.Build(t, ".", "edge")
	bin := filepath.Join(dir, "edge")
	reloadtest.Install(t, built, bin)
	ports := consultest.FreePorts(t, 3)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	httpsAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", ports[2])
	pidFile := filepath.Join(dir, "edge.pid")
	file := filepath.Join(dir, "edge.yaml")
	conf := func(dial string) string {
		return fmt.Sprintf("pod: pod-1\npublic_ip: 127.0.0.1\nhttp: %s\nhttps: %s\nadmin: 127.0.0.1:%d\nconsul:\n  address: %s\n"+
			"drain_delay: 0s\naccess_log:\n  enabled: false\npid_file: %s\n"+
			"tls:\n  redirect: false\n  certificates: [{cert: %s, key: %s}]\ntimeouts:\n  dial: %s\n",
			httpAddr, httpsAddr, ports[2], agent.HTTPAddr, pidFile, certFile, keyFile, dial)
	}
	reloadtest.WriteFile(t, file, conf("2s"))
	first := reloadtest.Start(t, bin, "-config", file)
	first.Notified(t, "READY=1")
	reloadtest.StopLast(t, pidFile, first)
	tlsConf := &tls.Config{RootCAs: pool, ServerName: "t1.example.test"}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	get := func(scheme, addr string) int {
		req, _ := http.NewRequest(http.MethodGet, scheme+"://"+addr+"/", nil)
		req.Host = "t1.example.test"
		resp, err := client.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	consultest.WaitFor(t, 20*time.Second, "the edge routes t1 over HTTPS", func() bool { return get("https", httpsAddr) == 200 })

	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	loads := []struct {
		name string
		cfg  loadgen.Config
	}{
		{"HTTPS, a connection per request", loadgen.Config{Addrs: []string{httpsAddr}, TLS: tlsConf, Conns: 6, NewConnPerRequest: true}},
		{"HTTPS, kept alive", loadgen.Config{Addrs: []string{httpsAddr}, TLS: tlsConf, Conns: 6, Rate: 600}},
		{"HTTP, kept alive", loadgen.Config{Addrs: []string{httpAddr}, Conns: 6, Rate: 600}},
	}
	var answered atomic.Int64
	results := make([]loadgen.Result, len(loads))
	var wg sync.WaitGroup
	for i, l := range loads {
		l.cfg.Host, l.cfg.Duration, l.cfg.Answered = "t1.example.test", 5*time.Minute, &answered
		wg.Go(func() {
			res, err := loadgen.Run(ctx, l.cfg)
			if err != nil {
				t.Errorf("%s: %v", l.name, err)
			}
			results[i] = res
		})
	}
	// The load goes on for 500 answers more between two steps.
	progress := func(when string) {
		t.Helper()
		n := answered.Load()
		consultest.WaitFor(t, 30*time.Second, when+": 500 answers more", func() bool { return answered.Load() >= n+500 })
	}
	progress("before the reloads")
	const reloads = 5
	for i := range reloads {
		reloadtest.WriteFile(t, file, conf(fmt.Sprintf("%ds", 3+i)))
		first.Reload(t, metrics, "edge", "ok", i+1)
		progress(fmt.Sprintf("after reload %d", i+1))
	}
	reloadtest.UpgradeFails(t, pidFile, bin, built, first.Log)
	const upgrades = 5
	for i := range upgrades {
		reloadtest.Upgrade(t, pidFile, first.Log, i+1)
		progress(fmt.Sprintf("after upgrade %d", i+1))
	}
	// The process serving last reloads too.
	reloadtest.WriteFile(t, file, conf("2s"))
	if err := syscall.Kill(reloadtest.ReadPID(pidFile), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 10*time.Second, "the last edge to reload", func() bool {
		return reloadtest.Metric(metrics, `edge_config_reloads_total{result="ok"}`) == 1
	})
	progress("after the last reload")
	stopLoad()
	wg.Wait()
	for i, l := range loads {
		res := results[i]
		t.Logf("%s: %d requests during %d reloads, one failed and %d upgrades: %d failed %v; p99 %s, max %s",
			l.name, res.Requests, reloads+1, upgrades, res.Failed, res.Failures, res.P99, res.Max)
		if res.Requests < 500 {
			t.Errorf("%s: only %d requests", l.name, res.Requests)
		}
		if res.Failed != 0 {
			t.Errorf("%s: %d requests failed: %v", l.name, res.Failed, res.Failures)
		}
	}
}
