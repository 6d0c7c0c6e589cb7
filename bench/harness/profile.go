package harness

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// profileEdge takes a CPU profile of the edge s through its admin
// listener, over the middle 80% of a run of length d that starts now, into
// Options.ProfileDir/name.pprof. It returns at once; wait on the channel
// for the profile to be written. Runs shorter than 2 s are not profiled.
func (h *harness) profileEdge(s *server, name string, d time.Duration) <-chan error {
	done := make(chan error, 1)
	secs := int(d.Seconds() * 0.8)
	if h.opts.ProfileDir == "" || s.admin == "" || secs < 1 || d < 2*time.Second {
		done <- nil
		return done
	}
	go func() {
		time.Sleep(d / 10) // skip the run's start: connections opening
		done <- fetchProfile(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.admin, secs),
			filepath.Join(h.opts.ProfileDir, name+".pprof"))
	}()
	return done
}

// fetchProfile saves what url answers to path.
func fetchProfile(url, path string) error {
	client := &http.Client{Timeout: 5 * time.Minute}
	resp, err := client.Get(url)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", url, err)
	}
	return f.Close()
}

// profileName turns a workload's name into a file name.
func profileName(prefix, workload string) string {
	r := strings.NewReplacer(" ", "-", "(", "", ")", "", ",", "", "/", "", "×", "x")
	return prefix + "-" + strings.ToLower(r.Replace(workload))
}
