// Command bench runs podedge's side-by-side load tests (see bench/README.md):
//
//	make bench
//	bin/bench -bin bin -consul-bin $(scripts/consul.sh) [-rounds 3] [-duration 10s] [-results bench]
//
// It installs the missing Debian packages when run as root (and otherwise
// says which command to run), starts every process on free loopback ports,
// prints progress on standard error and the Markdown report on standard
// output; with -results it keeps the report as a dated file under
// DIR/results/ and as DIR/RESULTS.md, the latest run. Ctrl-C stops every process it started; a second Ctrl-C exits at
// once (the children die with it).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podedge/podedge/bench/harness"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/version"
)

const prog = "bench"

func main() {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	var opts harness.Options
	fs.StringVar(&opts.Bin, "bin", "bin", "`folder` of make build's binaries (edge, dnsd, backend, forwarder, loopforwarder, loadgen)")
	fs.StringVar(&opts.Consul, "consul-bin", "", "consul `binary` (scripts/consul.sh prints one; default: consul on PATH)")
	fs.StringVar(&opts.ConsulMode, "consul-mode", harness.ConsulDev, "how Consul runs: `dev` (consul agent -dev) or server (one server, data on a tmpfs, compact JSON as in production)")
	fs.IntVar(&opts.Rounds, "rounds", 3, "rounds per system; medians are reported")
	fs.DurationVar(&opts.Duration, "duration", 10*time.Second, "length of each measured run")
	fs.DurationVar(&opts.FailureDuration, "failure-duration", 9*time.Second, "length of each run that kills a backend")
	fs.IntVar(&opts.Tenants, "tenants", 100_000, "tenants of the scale and sign-up phases (-only signups -tenants 1000000: the million-tenant figures)")
	fs.IntVar(&opts.Readers, "readers", 50, "routers bench/cmd/readers runs in the sign-up phase")
	fs.BoolVar(&opts.SignupsLeaderOnly, "signups-leader-only", false, "of the sign-up phase run only the leader: its first sign-up, the throughput run and its peak RSS")
	fs.StringVar(&opts.ProfileDir, "profile", "", "`folder` to save CPU profiles of the edge in (one per HTTP workload, one during the KV changes)")
	fs.StringVar(&opts.Dir, "dir", "", "`folder` for configurations and logs (default: a temporary one, removed after a successful run)")
	fs.BoolVar(&opts.Quick, "quick", false, "smoke run: fewer KV changes timed, shorter lookup benchmark (use with short durations)")
	fs.StringVar(&opts.Apps, "apps", harness.AppsWithServer, "where the two app servers run: `server` (on the server CPUs, with the proxy) or client (with the load generator, leaving the server CPUs to the proxy)")
	only := fs.String("only", "", "comma-separated `phases` to run ("+strings.Join(harness.Phases(), ", ")+"); default all")
	results := fs.String("results", "", "keep the report in `folder`/results/<YYYY-MM-DD-HHMM>.md and as folder/RESULTS.md, the latest run")
	readme := fs.String("readme", "", "deprecated: the same as -results with the `file`'s folder (the README itself is left alone)")
	out := fs.String("out", "", "also write the report to this `file`")
	install := fs.Bool("install", true, "install missing Debian packages with apt-get when running as root")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(prog, version.String())
		return
	}
	if fs.NArg() > 0 {
		config.Exit(prog, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	if *readme != "" {
		if *results != "" {
			config.Exit(prog, errors.New("-readme: give -results alone"))
		}
		// -readme FILE once replaced a section of FILE; the results now
		// live beside it.
		*results = filepath.Dir(*readme)
		fmt.Fprintf(os.Stderr, "%s: -readme is deprecated; writing the results as -results %s does\n", prog, *results)
	}
	if *only != "" {
		opts.Phases = strings.Split(*only, ",")
		if *results != "" {
			config.Exit(prog, errors.New("-results with -only would make part of a run the latest results: write this one with -out"))
		}
	}
	if *results != "" && opts.Apps != harness.AppsWithServer {
		config.Exit(prog, errors.New("-results holds the results of the default placement: write this one with -out"))
	}
	if opts.Consul == "" {
		p, err := harness.LookTool("consul")
		if err != nil {
			config.Exit(prog, errors.New("-consul-bin: no consul on PATH (scripts/consul.sh builds one)"))
		}
		opts.Consul = p
	}
	opts.Progress = os.Stderr

	if *install {
		if err := harness.Ensure(os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
			os.Exit(1)
		}
	} else if missing := harness.Missing(); len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "%s: %s is missing: run `sudo %s`\n", prog, missing[0].Name, harness.InstallCommand)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		// The next signal ends the harness at once.
		stop()
	}()
	rep, err := harness.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
		os.Exit(1)
	}
	rep.Command = command()
	md := rep.Markdown()
	fmt.Print(md)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
			os.Exit(1)
		}
	}
	if *results != "" {
		path, err := harness.SaveResults(*results, rep.Started, md)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "%s: results in %s and %s\n", prog, path, filepath.Join(*results, harness.LatestFile))
	}
}

// command is how the run was started, for the report: "make bench" under
// make, else the command line.
func command() string {
	if os.Getenv("MAKELEVEL") != "" {
		return "make bench"
	}
	return strings.Join(os.Args, " ")
}
