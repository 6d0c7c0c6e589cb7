// Package config loads the YAML configuration files of podedge's binaries:
// strictly (an unknown key is an error), with errors of one line that name
// the file, the line and the key.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consulkv"
	"github.com/podedge/podedge/router"
	"go.yaml.in/yaml/v3"
)

// Load decodes the YAML file at path into dst, which holds the defaults.
// Keys absent from the file keep them; unknown keys are an error.
func Load(path string, dst any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return Decode(path, raw, dst)
}

// Decode is Load for bytes already read; name is used in errors.
func Decode(name string, raw []byte, dst any) error {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(dst); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %s", name, oneLine(err, raw))
	}
	return nil
}

var (
	unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)
	cannotDecode = regexp.MustCompile(`cannot unmarshal !!\w+ ` + "`" + `([^` + "`" + `]*)` + "`" + ` into (\S+)`)
)

var errorLine = regexp.MustCompile(`^line (\d+): `)

// oneLine turns yaml.v3's multi-line errors into one line an operator can
// act on, naming the key where the file tells: `line 3: unknown key
// "listne"`, `line 5: timeouts.dial: invalid value "soon" (want
// time.Duration)`.
func oneLine(err error, raw []byte) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: unmarshal errors:\n")
	msg = strings.TrimPrefix(msg, "yaml: ")
	msg = unknownField.ReplaceAllString(msg, `unknown key "$1"`)
	lines := strings.Split(msg, "\n")
	for i := range lines {
		l := strings.TrimSpace(lines[i])
		if cannotDecode.MatchString(l) {
			if m := errorLine.FindStringSubmatch(l); m != nil {
				if key := keyAtLine(raw, m[1]); key != "" {
					l = m[0] + key + ": " + l[len(m[0]):]
				}
			}
			l = cannotDecode.ReplaceAllString(l, `invalid value "$1" (want $2)`)
		}
		lines[i] = l
	}
	return strings.Join(lines, "; ")
}

// keyAtLine returns the dotted path of the key whose scalar value sits on
// line (a decimal string) of the YAML document raw, or "".
func keyAtLine(raw []byte, line string) string {
	var doc yaml.Node
	if yaml.Unmarshal(raw, &doc) != nil {
		return ""
	}
	var walk func(n *yaml.Node, path string) string
	walk = func(n *yaml.Node, path string) string {
		switch n.Kind {
		case yaml.DocumentNode, yaml.SequenceNode:
			for _, c := range n.Content {
				if p := walk(c, path); p != "" {
					return p
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if v.Kind == yaml.ScalarNode && strconv.Itoa(v.Line) == line {
					return p
				}
				if found := walk(v, p); found != "" {
					return found
				}
			}
		}
		return ""
	}
	return walk(&doc, "")
}

// Consul is the consul section every binary shares.
type Consul struct {
	// Address of the local Consul agent's HTTP API.
	Address string `yaml:"address"`
	// Prefix of podedge's keys in KV.
	Prefix string `yaml:"prefix"`
	// Token is an ACL token, if ACLs are on. CONSUL_HTTP_TOKEN works too.
	Token string `yaml:"token"`
	// Consistent makes reads go to the Consul leader instead of any server.
	Consistent bool `yaml:"consistent"`
}

// DefaultConsul is the local agent and the "podedge/" prefix.
func DefaultConsul() Consul {
	return Consul{Address: "127.0.0.1:8500", Prefix: "podedge/"}
}

// Validate names the first bad key, under the section name "consul".
func (c Consul) Validate() error {
	if c.Address == "" {
		return errors.New("consul.address: must not be empty")
	}
	if strings.HasPrefix(c.Prefix, "/") || c.Prefix == "" {
		return fmt.Errorf("consul.prefix: %q must be a relative key prefix such as podedge/", c.Prefix)
	}
	return nil
}

// APIConfig is consul/api's configuration for the agent: its defaults and
// CONSUL_HTTP_* environment (scheme, TLS, token) under the address and
// token of this section.
func (c Consul) APIConfig() *api.Config {
	cfg := api.DefaultConfig()
	cfg.Address = c.Address
	if c.Token != "" {
		cfg.Token = c.Token
	}
	return cfg
}

// Client returns a Consul API client for the agent. Blocking queries must
// not be cut short, so the client has no overall timeout.
func (c Consul) Client() (*api.Client, error) {
	client, err := api.NewClient(c.APIConfig())
	if err != nil {
		return nil, fmt.Errorf("consul.address %q: %w", c.Address, err)
	}
	return client, nil
}

// KVLister returns the router's lister of KV folders for the agent: one
// that reads Consul's JSON in place, or nil (the router's consul/api
// default) for an agent on a unix socket.
func (c Consul) KVLister() (router.KVLister, error) {
	l, err := consulkv.New(c.APIConfig())
	if err != nil {
		return nil, fmt.Errorf("consul.address %q: %w", c.Address, err)
	}
	if l == nil {
		return nil, nil
	}
	return l, nil
}

// Log is the log section every binary shares.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is json (default) or text.
	Format string `yaml:"format"`
}

// DefaultLog logs JSON at info.
func DefaultLog() Log { return Log{Level: "info", Format: "json"} }

// Logger builds the process logger writing to w.
func (l Log) Logger(w io.Writer) (*slog.Logger, error) {
	return l.LeveledLogger(w, new(slog.LevelVar))
}

// LeveledLogger is Logger at the level of lv, which it sets to log.level:
// SetLevel changes it later, while the process runs.
func (l Log) LeveledLogger(w io.Writer, lv *slog.LevelVar) (*slog.Logger, error) {
	if err := l.SetLevel(lv); err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch l.Format {
	case "", "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log.format: %q is not json or text", l.Format)
}

// SetLevel sets lv to log.level.
func (l Log) SetLevel(lv *slog.LevelVar) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.Level)); err != nil {
		return fmt.Errorf("log.level: %q is not debug, info, warn or error", l.Level)
	}
	lv.Set(level)
	return nil
}

// Exit prints err as one line prefixed with the program's name and exits
// with status 2, as a bad flag or config value must.
func Exit(prog string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %s\n", prog, strings.ReplaceAll(err.Error(), "\n", "; "))
	os.Exit(2)
}

// ErrVersion is what ParseFlags returns when -version is given.
var ErrVersion = errors.New("version requested")

// ParseFlags parses a binary's flags, the same way for every binary: -h
// prints usage (a line, then the flags) and returns flag.ErrHelp; an
// argument that is not a flag is an error; -version returns ErrVersion.
// fs must define the bool flag "version". Errors are returned, not
// printed: fs's output is silenced but for -h.
func ParseFlags(fs *flag.FlagSet, args []string, usage string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fmt.Fprintln(os.Stderr, usage)
			fs.PrintDefaults()
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if v := fs.Lookup("version"); v != nil && v.Value.String() == "true" {
		return ErrVersion
	}
	return nil
}
