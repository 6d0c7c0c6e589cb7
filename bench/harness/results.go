package harness

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Where a run's report is kept: one dated file per run under results/,
// which is the history, and RESULTS.md, always the latest run, so that
// links to "the latest results" never move.
const (
	ResultsFolder = "results"
	LatestFile    = "RESULTS.md"
)

// ResultsName is the dated file name of a run started at t, in UTC:
// 2026-11-27-0100.md. Names sort by time.
func ResultsName(t time.Time) string {
	return t.UTC().Format("2006-01-02-1504") + ".md"
}

// SaveResults writes markdown, the report of a run started at started, to
// dir/results/<YYYY-MM-DD-HHMM>.md and to dir/RESULTS.md, and returns the
// dated file's path. A dated file already there (two runs started in the
// same minute) is kept: the new one gets a suffix, -2, -3 and so on.
func SaveResults(dir string, started time.Time, markdown string) (string, error) {
	results := filepath.Join(dir, ResultsFolder)
	if err := os.MkdirAll(results, 0o755); err != nil {
		return "", fmt.Errorf("results: %w", err)
	}
	when := started.UTC().Format("2006-01-02 15:04 MST")
	name := ResultsName(started)
	stem := name[:len(name)-len(".md")]
	dated := `# bench: the run of ` + when + "\n\n" +
		"Written by `make bench`; how to read it: [bench/README.md](../README.md#reading-the-report).\n\n" +
		markdown
	var path string
	for i := 1; ; i++ {
		if i > 1 {
			name = fmt.Sprintf("%s-%d.md", stem, i)
		}
		path = filepath.Join(results, name)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("results: %w", err)
		}
		_, err = f.WriteString(dated)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", fmt.Errorf("results: %w", err)
		}
		break
	}
	latest := "# bench: the latest results\n\n" +
		"The newest run of `make bench`, also kept as [" + ResultsFolder + "/" + name + "](" + ResultsFolder + "/" + name + "); " +
		"every run is in [" + ResultsFolder + "/](" + ResultsFolder + "/). How to read it: [README.md](README.md#reading-the-report).\n\n" +
		markdown
	if err := writeReplacing(filepath.Join(dir, LatestFile), latest); err != nil {
		return "", fmt.Errorf("results: %w", err)
	}
	return path, nil
}

// writeReplacing writes text to path through a temporary file renamed over
// it, so that an interrupted run never leaves half a RESULTS.md.
func writeReplacing(path, text string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(text)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
