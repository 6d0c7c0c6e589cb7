package edge

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// wsBackend echoes every WebSocket message back, whole.
func wsBackend(t *testing.T, name string) *backend {
	echo := websocket.Handler(func(c *websocket.Conn) {
		for {
			var msg []byte
			if err := websocket.Message.Receive(c, &msg); err != nil {
				return
			}
			if err := websocket.Message.Send(c, msg); err != nil {
				return
			}
		}
	})
	return newBackend(t, name, echo.ServeHTTP)
}

// dialWS opens a WebSocket to tenant acme through the edge at addr.
func dialWS(t *testing.T, addr string) (*websocket.Conn, error) {
	cfg, err := websocket.NewConfig("ws://acme.example.test/echo", "http://acme.example.test/")
	if err != nil {
		t.Fatal(err)
	}
	return websocket.NewClient(cfg, rawConn(t, addr))
}

func TestWebSocketEcho(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		dead := wsBackend(t, "dead")
		dead.kill()
		ws := wsBackend(t, "ws")
		// The dead endpoint is tried first half of the time: the upgrade is
		// retried elsewhere like any GET, before the client connection is
		// taken over.
		p := &Proxy{}
		h := newHarnessOn(t, engine, p, onePod(dead, ws))
		for i := range 4 {
			c, err := dialWS(t, h.addr)
			if err != nil {
				t.Fatalf("handshake %d: %v", i, err)
			}
			for _, msg := range [][]byte{[]byte("hello"), bytes.Repeat([]byte("0123456789"), 20000)} {
				if err := websocket.Message.Send(c, msg); err != nil {
					t.Fatal(err)
				}
				var got []byte
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if err := websocket.Message.Receive(c, &got); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("echo of %d bytes: got %d bytes, %v", len(msg), len(got), err)
				}
			}
			c.Close()
		}
	})
}

func TestWebSocketRefusedUpgradeIsPassedOn(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		plain := newBackend(t, "plain", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "no websockets here", http.StatusBadRequest)
		})
		h := newHarnessOn(t, engine, &Proxy{}, onePod(plain))
		_, err := dialWS(t, h.addr)
		if err == nil {
			t.Fatal("handshake succeeded against an app that refuses it")
		}
		if plain.lastRequest().Header.Get("Upgrade") != "websocket" {
			t.Fatalf("app did not receive the Upgrade header: %v", plain.lastRequest().Header)
		}
	})
}

func TestWebSocketIdleTunnelCloses(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		ws := wsBackend(t, "ws")
		p := &Proxy{Timeouts: Timeouts{WebSocketIdle: time.Second}}
		h := newHarnessOn(t, engine, p, onePod(ws))
		c, err := dialWS(t, h.addr)
		if err != nil {
			t.Fatal(err)
		}
		// The tunnel is counted once the 101 has gone out, so the handshake
		// alone does not prove it open; an echo through it does.
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		var msg []byte
		if err := websocket.Message.Send(c, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		if err := websocket.Message.Receive(c, &msg); err != nil || string(msg) != "ping" {
			t.Fatalf("echo: %q, %v", msg, err)
		}
		if p.Tunnels() != 1 {
			t.Fatalf("%d tunnels open, want 1", p.Tunnels())
		}
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(8 * time.Second))
		if err := websocket.Message.Receive(c, &msg); err == nil || time.Since(start) > 5*time.Second {
			t.Fatalf("idle tunnel: %v after %s, want it closed within the idle timeout", err, time.Since(start))
		}
	})
}
