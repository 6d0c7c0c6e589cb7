package child

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func start(t *testing.T, spec Spec) *Process {
	t.Helper()
	if spec.LogDir == "" {
		spec.LogDir = t.TempDir()
	}
	p, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func logHas(path, s string) func() bool {
	return func() bool {
		raw, _ := os.ReadFile(path)
		return strings.Contains(string(raw), s)
	}
}

func TestStopEndsOnItsOwn(t *testing.T) {
	p := start(t, Spec{Name: "sleep", Bin: "sleep", Args: []string{"30"}})
	if p.Exited() {
		t.Fatal("sleep exited at once")
	}
	begin := time.Now()
	if !p.Stop(20 * time.Second) {
		t.Fatal("Stop reports sleep was killed; SIGTERM should have ended it")
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Fatalf("Stop took %s", d)
	}
	if !p.Exited() {
		t.Fatal("not exited after Stop")
	}
	// Death by SIGTERM is not a clean exit.
	if err := p.CleanExit(); err == nil || !strings.Contains(err.Error(), "sleep exited with signal: terminated") {
		t.Fatalf("CleanExit = %v, want the signal named", err)
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "stubborn.log")
	// The shell ignores SIGTERM and so does its background sleep; both are
	// in the child's group, which Stop kills after the grace period.
	p := start(t, Spec{Name: "stubborn", LogDir: dir, Bin: "sh", Args: []string{"-c",
		`trap '' TERM; sleep 30 & echo "ready $!"; wait`}})
	waitFor(t, "the trap to be set", logHas(log, "ready"))
	raw, _ := os.ReadFile(log)
	sleeper, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(raw), "ready ")))
	if err != nil {
		t.Fatalf("log %q: %v", raw, err)
	}
	if p.Stop(200 * time.Millisecond) {
		t.Fatal("Stop reports the child ended on its own")
	}
	// The sleep's new parent may be slow to reap it: a zombie is dead too.
	waitFor(t, "the background sleep to die", func() bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", sleeper))
		if err != nil {
			return true
		}
		_, after, _ := strings.Cut(string(stat), ") ")
		return strings.HasPrefix(after, "Z") || strings.HasPrefix(after, "X")
	})
}

func TestStopSignal(t *testing.T) {
	dir := t.TempDir()
	p := start(t, Spec{Name: "int", LogDir: dir, StopSignal: syscall.SIGINT, Bin: "sh", Args: []string{"-c",
		`trap 'echo got INT; exit 0' INT; trap '' TERM; echo ready; while :; do sleep 0.05; done`}})
	waitFor(t, "the traps to be set", logHas(filepath.Join(dir, "int.log"), "ready"))
	if !p.Stop(20 * time.Second) {
		t.Fatal("the child ignored SIGINT")
	}
	if err := p.CleanExit(); err != nil {
		t.Fatal(err)
	}
}

func TestFailureAndExitStatus(t *testing.T) {
	dir := t.TempDir()
	p := start(t, Spec{Name: "failing", LogDir: dir, Bin: "sh", Args: []string{"-c",
		`i=1; while [ $i -le 20 ]; do echo line $i; i=$((i+1)); done; echo oops >&2; exit 3`}})
	waitFor(t, "the child to exit", p.Exited)
	if got := p.State().ExitCode(); got != 3 {
		t.Fatalf("exit code %d, want 3", got)
	}
	err := p.CleanExit()
	if err == nil || !strings.Contains(err.Error(), "failing exited with exit status 3") {
		t.Fatalf("CleanExit = %v, want the exit status", err)
	}
	msg := p.Failure().Error()
	for _, want := range []string{"failing exited (exit status 3)", "line 20", "oops", filepath.Join(dir, "failing.log")} {
		if !strings.Contains(msg, want) {
			t.Errorf("Failure = %q, want %q in it", msg, want)
		}
	}
	// 15 lines: the last 14 "line" and "oops".
	if strings.Contains(msg, "line 6\n") || !strings.Contains(msg, "line 7\n") {
		t.Errorf("Failure = %q, want the last 15 lines of the log exactly", msg)
	}
}

func TestLogTruncatedOrAppended(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "echo.log")
	run := func(word string, appendLog bool) {
		p := start(t, Spec{Name: "echo", LogDir: dir, AppendLog: appendLog, Bin: "echo", Args: []string{word}})
		if err := p.CleanExit(); err != nil {
			t.Fatal(err)
		}
	}
	run("one", false)
	run("two", true)
	if raw, _ := os.ReadFile(log); string(raw) != "one\ntwo\n" {
		t.Fatalf("appended log %q", raw)
	}
	run("three", false)
	if raw, _ := os.ReadFile(log); string(raw) != "three\n" {
		t.Fatalf("truncated log %q", raw)
	}
}

func TestStartError(t *testing.T) {
	_, err := Start(Spec{Name: "missing", LogDir: t.TempDir(), Bin: "/nonexistent/program"})
	if err == nil || !strings.Contains(err.Error(), "missing: start /nonexistent/program") {
		t.Fatalf("Start = %v, want an error naming the child and program", err)
	}
}
