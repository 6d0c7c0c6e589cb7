package localpod

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestCheckFreeNamesTheHolder(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = checkFree([]endpoint{{"leader-1", "tcp", l.Addr().String()}})
	if err == nil {
		t.Fatal("a taken address passed the check")
	}
	want := "leader-1 address " + l.Addr().String() + "/tcp is taken by "
	pid := " (pid " + strconv.Itoa(os.Getpid()) + ")"
	if !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), pid) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %q, want one line starting %q and naming this process%s", err, want, pid)
	}
}

func TestCheckFreeUDP(t *testing.T) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = checkFree([]endpoint{{"dnsd", "udp", c.LocalAddr().String()}})
	if err == nil || !strings.Contains(err.Error(), "(pid "+strconv.Itoa(os.Getpid())+")") {
		t.Fatalf("udp holder not named: %v", err)
	}
}

func TestCheckFreeWildcardHolder(t *testing.T) {
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	err = checkFree([]endpoint{{"edge", "tcp", "127.0.0.11:" + strconv.Itoa(port)}})
	if err == nil || !strings.Contains(err.Error(), "(pid "+strconv.Itoa(os.Getpid())+")") {
		t.Fatalf("wildcard holder not named: %v", err)
	}
}

func TestParseProcAddr(t *testing.T) {
	a, p, ok := parseProcAddr("0B00007F:1F90")
	if !ok || a.String() != "127.0.0.11" || p != 8080 {
		t.Fatalf("%v %d %v", a, p, ok)
	}
	a, p, ok = parseProcAddr("00000000000000000000000001000000:0035")
	if !ok || a.String() != "::1" || p != 53 {
		t.Fatalf("%v %d %v", a, p, ok)
	}
}
